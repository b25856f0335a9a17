"""The planner page at `/` in headless Chromium against a live server: planner, jobs, fits and
the API key, each compared with what the API answers for the same inputs."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.session import create_engine_for, make_sessionmaker
from app.main import create_app
from app.repositories import jobs as jobs_repo
from app.schemas.common import EXAMPLE_LAW
from app.services.observations import add_observations
from app.web.routes import STATIC_DIR, STATIC_URL
from tests.api.conftest import FAMILY, LAW, synthetic_observations
from tests.api.test_jobs import job_request
from tests.web.conftest import ROOT, UNFITTED, LiveServer, WebPage

pytestmark = pytest.mark.xdist_group("web")

RULES = ("marginal", "gap", "target")


def _wait_for_update(web: WebPage, after: int) -> int:
    """Wait until the planner has redrawn more than `after` times; the new count."""
    web.page.wait_for_function(
        """n => {
            const results = document.querySelector('#view-planner .results');
            return Number(results.dataset.updates || 0) > n
                && results.getAttribute('aria-busy') === 'false';
        }""",
        arg=after,
    )
    return int(web.page.locator("#view-planner .results").get_attribute("data-updates") or 0)


def _shown(web: WebPage) -> dict[str, Any]:
    """What the planner shows: slider values, each rule's numbers, the curve's path."""
    page = web.page
    values = {n: float(page.locator(f"#{n}-value").get_attribute("data-value") or "nan")
              for n in ("n0", "rho", "l0")}  # fmt: skip
    rules: dict[str, dict[str, float]] = {}
    for rule in RULES:
        row = page.locator(f"#rule-{rule}")
        rules[rule] = {
            cell: float(row.locator(f".{cell}").get_attribute("data-value") or "nan")
            for cell in ("tokens", "loss", "floor")
        }
        rules[rule]["target"] = float(row.get_attribute("data-target") or "nan")
    return {
        "values": values,
        "rules": rules,
        "curve": page.locator("#curve-line").get_attribute("d"),
        "band": page.locator("#curve-band").count(),
        "observed": page.locator("circle.obs").count(),
    }


def test_planner_slider_moves_the_curve_and_shows_what_recommend_answers(
    live_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{live_server.url}/")
    count = _wait_for_update(web, 0)
    # The page opens on a family a law answers for, not on the first name (which has no fit).
    assert page.locator("#family").input_value() == FAMILY
    assert "no default fit" in page.locator(f'#family option[value="{UNFITTED}"]').inner_text()
    before = _shown(web)
    page.locator("#rho").focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    _wait_for_update(web, count)
    after = _shown(web)
    web.screenshot("planner")

    assert after["values"]["rho"] > before["values"]["rho"]
    assert after["curve"] != before["curve"]
    assert after["band"] == 1 and after["observed"] > 0
    with live_server.client() as client:
        for rule in RULES:
            assert after["rules"][rule]["tokens"] != before["rules"][rule]["tokens"], rule
            body: dict[str, Any] = {
                "family": FAMILY,
                "method": page.locator("#method").input_value(),
                **after["values"],
                "rule": rule,
                "interval": 0.8,
                "interval_kind": "prediction",
            }
            if rule == "target":
                body["target_loss"] = after["rules"]["target"]["target"]
            else:
                body["threshold"] = float(page.locator(f"#{rule}-threshold").input_value())
            answer = client.post("/recommend", json=body).json()
            assert after["rules"][rule] | {"target": 0} == {
                "tokens": answer["tokens"],
                "loss": answer["predicted_loss"],
                "floor": answer["floor_loss"],
                "target": 0,
            }, rule
        # The joint plan, made for the family when the page opened (N0 and L0 unchanged since).
        plan = client.post(
            "/plan",
            json={
                "family": FAMILY,
                "n0": after["values"]["n0"],
                "l0": after["values"]["l0"],
                "rho_min": float(page.locator("#rho-min").input_value()),
                "token_budget": float(page.locator("#token-budget").input_value()),
                "interval": 0.8,
                "interval_kind": "prediction",
                "max_options": int(page.locator("#plan-options").input_value()),
            },
        ).json()
    rows = page.locator("#plan-table tbody tr")
    rows.first.wait_for()
    assert rows.count() == len(plan["options"]) > 1
    best = rows.first.locator("td")
    assert best.nth(1).inner_text() == plan["best"]["method"]
    assert best.nth(4).inner_text() == f"{plan['best']['predicted_loss']:.4f}"
    web.assert_offline()


def test_planner_with_an_inline_law_and_an_unreachable_target(
    live_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{live_server.url}/")
    count = _wait_for_update(web, 0)
    page.get_by_role("radio", name="Inline law").check()
    count = _wait_for_update(web, count)
    shown = _shown(web)
    body = {"law": EXAMPLE_LAW, **shown["values"], "interval": 0.8, "interval_kind": "prediction"}
    with live_server.client() as client:
        answer = client.post("/recommend", json={**body, "rule": "gap", "threshold": 0.02}).json()
        unreachable = client.post("/recommend", json={**body, "rule": "target", "target_loss": 1.0})
    assert shown["rules"]["gap"]["tokens"] == answer["tokens"]
    assert shown["band"] == 0  # an inline law has no refits, so no interval
    page.locator("#target-loss").fill("1.0")
    page.locator("#target-loss").press("Enter")
    _wait_for_update(web, count)
    error = page.locator("#rule-target .rule-error").inner_text()
    assert unreachable.status_code == 422
    assert error.startswith("422") and unreachable.json()["detail"] in error
    assert f"floor_loss = {unreachable.json()['floor_loss']:.6g}" in error
    web.assert_offline()


#: The shipped real-model reference family: its runs stop at a few thousand tokens.
REFERENCE_FAMILY = "smollm2-135m"
#: "≈ 7.8T tokens — extrapolated 950× beyond the 8,192 tokens observed".
EXTRAPOLATED = re.compile(
    r"≈ [\d.]+[kMBT]? tokens — extrapolated ([\d,.]+)× beyond the ([\d,]+) tokens observed"
)


def _factor_shown(beyond: float) -> str:
    """The factor as the page writes it (2 significant digits, thousands separated)."""
    return f"{float(f'{beyond:.2g}'):,.0f}" if beyond >= 100 else f"{float(f'{beyond:.2g}'):g}"


def test_a_plan_far_beyond_the_reference_familys_tokens_reads_as_an_extrapolation(
    reference_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{reference_server.url}/")
    count = _wait_for_update(web, 0)
    if page.locator("#family").input_value() != REFERENCE_FAMILY:
        page.locator("#family").select_option(REFERENCE_FAMILY)
        count = _wait_for_update(web, count)
    page.locator("#token-budget").fill("1e10")
    page.locator("#plan-button").click()
    n0, l0 = (float(page.locator(f"#{n}-value").get_attribute("data-value") or "nan")
              for n in ("n0", "l0"))  # fmt: skip
    with reference_server.client() as client:
        plan = client.post(
            "/plan",
            json={
                "family": REFERENCE_FAMILY,
                "n0": n0,
                "l0": l0,
                "rho_min": float(page.locator("#rho-min").input_value()),
                "token_budget": 1e10,
                "interval": 0.8,
                "interval_kind": "prediction",
                "max_options": int(page.locator("#plan-options").input_value()),
            },
        ).json()
        observed = {
            (m["method"], m["recipe"]): m["tokens"][1]
            for f in client.get("/families").json()["families"]
            if f["family"] == REFERENCE_FAMILY
            for m in f["methods"]
        }
    best = plan["best"]
    # The fresh install's reference runs stop far below the budget: the best plan extrapolates.
    assert best["beyond_observed"] > 10
    page.wait_for_function(
        "t => Number(document.querySelector('#plan-table td.tokens')?.dataset.value) === t",
        arg=best["tokens"],
    )
    rows = page.locator("#plan-table tbody tr")
    assert rows.count() == len(plan["options"])
    for index, option in enumerate(plan["options"]):
        cell = rows.nth(index).locator("td.tokens")
        text = cell.inner_text()
        far = option["beyond_observed"] > 10
        assert ("extrapolated" in (cell.get_attribute("class") or "")) == far, (index, text)
        if far:
            shown = EXTRAPOLATED.fullmatch(text)
            assert shown, text  # not a bare number
            assert shown[1] == _factor_shown(option["beyond_observed"]), text
            seen = round(option["tokens"] / option["beyond_observed"])
            assert shown[2] == f"{seen:,}", text
            most = observed[(option["method"], option["recipe"])]
            assert seen == round(most) or seen < most
        else:
            assert EXTRAPOLATED.search(text) is None, text
    # The plan's warnings about it are listed first and marked, not folded away.
    far_warnings = page.locator("#plan-warnings li.far")
    assert far_warnings.count() >= 1
    assert far_warnings.first.is_visible()
    assert "extrapolation" in far_warnings.first.inner_text()

    # The rules' recommendations from the same data read as extrapolations too, and their
    # warnings are open.
    marginal = page.locator("#rule-marginal td.tokens")
    assert float(marginal.get_attribute("data-value") or "nan") > 10 * max(observed.values())
    assert "extrapolated" in (marginal.get_attribute("class") or "")
    assert EXTRAPOLATED.fullmatch(marginal.inner_text()), marginal.inner_text()
    assert page.locator("#view-planner details.warnings-box").get_attribute("open") is not None
    assert page.locator("#planner-warnings li.far").first.is_visible()
    web.screenshot("planner-extrapolation")
    web.assert_offline()


#: A family whose depth runs were recovered by two recipes (uploaded by the recipes test).
RECIPE_FAMILY = "llama-3-recipes"
#: LoRA's synthetic law: it recovers more slowly than full post-training.
LORA_LAW = {**LAW, "D_C": 0.06, "beta": 0.4}
#: "3.2e15 FLOPs", as format.js writes training FLOPs.
FLOPS = re.compile(r"\d(\.\d)?e\d+ FLOPs")


def _upload_two_recipes(server: LiveServer) -> None:
    """Upload the depth runs of RECIPE_FAMILY under full and lora through the API, and make a
    default fit per recipe (each with bootstrap refits, so each curve has a band)."""
    rows = [
        {**row, "family": RECIPE_FAMILY, "run_id": f"{recipe}-{row['run_id']}", "recipe": recipe}
        for recipe, law, seed in (("full", LAW, 3), ("lora", LORA_LAW, 4))
        for row in synthetic_observations("depth", params=law, seed=seed)
    ]
    with server.client() as client:
        response = client.post("/observations", json={"observations": rows})
        assert response.status_code == 201, response.text
        for recipe in ("full", "lora"):
            body = {"family": RECIPE_FAMILY, "method": "depth", "recipe": recipe, "bootstrap": 8,
                    "make_default": True, "measure_coverage": False}  # fmt: skip
            response = client.post("/fits", json=body)
            assert response.status_code == 201, response.text


def _recipe_summary(options: list[dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    """Per recipe, the options with the fewest tokens and the fewest FLOPs among those that
    reach the highest of the recipes' best losses (options come best first; ties keep the
    first)."""
    mine = {r: [o for o in options if o["recipe"] == r] for r in recipes}
    goal = max(found[0]["predicted_loss"] for found in mine.values())
    reach = {r: [o for o in found if o["predicted_loss"] <= goal] for r, found in mine.items()}
    return {
        "goal": goal,
        "tokens": {r: min(found, key=lambda o: o["tokens"]) for r, found in reach.items()},
        "flops": {r: min(found, key=lambda o: o["flops"]) for r, found in reach.items()},
    }


def test_planner_compares_the_recovery_recipes_of_a_family(
    live_server: LiveServer, web: WebPage
) -> None:
    _upload_two_recipes(live_server)
    page = web.page
    page.goto(f"{live_server.url}/")
    count = _wait_for_update(web, 0)
    # A family with one recipe looks as before: no recipe choice, no recipe or FLOPs column.
    assert page.locator("#family").input_value() == FAMILY
    assert page.locator("#recipe-row").is_hidden()
    page.locator("#plan-table tbody tr").first.wait_for()
    assert page.locator("#plan-table thead th", has_text="FLOPs").is_hidden()
    assert page.locator("#plan-table td.flops").count() == 0
    assert page.locator("#plan-recipes").is_hidden()

    page.locator("#family").select_option(RECIPE_FAMILY)
    count = _wait_for_update(web, count)
    assert page.locator("#recipe-row").is_visible()
    offered = page.locator("#recipe option").evaluate_all("os => os.map(o => o.value)")
    assert offered == ["all", "full", "lora"]
    assert page.locator("#recipe").input_value() == "all"

    # One curve per recipe, each drawn in its own style and named in the legend, with a band.
    lines = {r: page.locator(f"#curve-line-{r}") for r in ("full", "lora")}
    assert all(line.count() == 1 for line in lines.values())
    assert lines["full"].get_attribute("style") != lines["lora"].get_attribute("style")
    assert page.locator(".chart .band").count() == 2
    legend = page.locator(".legend li[data-recipe]")
    assert legend.evaluate_all("items => items.map(i => i.dataset.recipe)") == ["full", "lora"]

    # Each rule answers per recipe, and the numbers are what /recommend answers with `recipe`.
    v = {n: float(page.locator(f"#{n}-value").get_attribute("data-value") or "nan")
         for n in ("n0", "rho", "l0")}  # fmt: skip
    common = {"family": RECIPE_FAMILY, "method": "depth", **v, "interval": 0.8,
              "interval_kind": "prediction"}  # fmt: skip
    with live_server.client() as client:
        for recipe in ("full", "lora"):
            for rule in RULES:
                row = page.locator(f"#rule-{rule}-{recipe}")
                body = {**common, "recipe": recipe, "rule": rule}
                if rule == "target":
                    body["target_loss"] = float(row.get_attribute("data-target") or "nan")
                else:
                    body["threshold"] = float(page.locator(f"#{rule}-threshold").input_value())
                answer = client.post("/recommend", json=body).json()
                shown = float(row.locator(".tokens").get_attribute("data-value") or "nan")
                assert shown == answer["tokens"], (rule, recipe)
        # Without a typed target, both recipes are asked for the same loss.
        targets = page.locator("#rules-table tr[data-rule=target]").evaluate_all(
            "rows => rows.map(r => r.dataset.target)"
        )
        assert len(targets) == 2 and len(set(targets)) == 1

        # The plan: every option with its recipe and FLOPs, as /plan answers them.
        page.locator("#plan-options").fill("400")
        page.locator("#plan-button").click()
        plan = client.post(
            "/plan",
            json={
                "family": RECIPE_FAMILY,
                "recipes": None,
                "n0": v["n0"],
                "l0": v["l0"],
                "rho_min": float(page.locator("#rho-min").input_value()),
                "token_budget": float(page.locator("#token-budget").input_value()),
                "interval": 0.8,
                "interval_kind": "prediction",
                "max_options": 1000,
            },
        ).json()
    assert plan["recipes"] == ["full", "lora"]
    rows = page.locator("#plan-table tbody tr")
    page.wait_for_function(
        "n => document.querySelectorAll('#plan-table tbody tr').length === n",
        arg=min(400, len(plan["options"])),
    )
    shown_rows = rows.evaluate_all(
        """rows => rows.map(r => ({
            method: r.dataset.method,
            recipe: r.dataset.recipe,
            tokens: Number(r.querySelector('td.tokens').dataset.value),
            flops: Number(r.querySelector('td.flops').dataset.value),
            flopsText: r.querySelector('td.flops').textContent,
        }))"""
    )
    assert {r["recipe"] for r in shown_rows} == {"full", "lora"}
    for row, option in zip(shown_rows, plan["options"], strict=False):
        keys = ("method", "recipe", "tokens")
        assert [row[k] for k in keys] == [option[k] for k in keys]
        assert row["flops"] == pytest.approx(option["flops"], rel=1e-12)
        assert FLOPS.fullmatch(row["flopsText"]), row["flopsText"]
        assert float(row["flopsText"].split()[0]) == pytest.approx(option["flops"], rel=0.05)

    # Side by side: the fewest tokens and FLOPs of each recipe to the loss both reach.
    summary = page.locator("#plan-recipes")
    assert summary.is_visible()
    expected = _recipe_summary(plan["options"], plan["recipes"])
    assert f"{expected['goal']:.4f}" in summary.locator("caption").inner_text()
    for recipe in plan["recipes"]:
        row = summary.locator(f'tr[data-recipe="{recipe}"]')
        tokens = float(row.locator("td.tokens").get_attribute("data-value") or "nan")
        flops = float(row.locator("td.flops").get_attribute("data-value") or "nan")
        assert tokens == expected["tokens"][recipe]["tokens"], recipe
        assert flops == pytest.approx(expected["flops"][recipe]["flops"], rel=1e-12), recipe
        assert FLOPS.fullmatch(row.locator("td.flops").inner_text())
    assert summary.locator("td.tokens.best").count() >= 1
    assert summary.locator("td.flops.best").count() >= 1
    web.screenshot("planner-recipes")
    page.locator("#plan-heading").evaluate("heading => heading.scrollIntoView()")
    web.screenshot("planner-recipes-plan")

    # One recipe chosen: one curve, and only its options.
    page.locator("#recipe").select_option("lora")
    _wait_for_update(web, count)
    page.wait_for_function(
        """() => [...document.querySelectorAll('#plan-table tbody tr')]
                   .every(r => r.dataset.recipe === 'lora')"""
    )
    assert page.locator("#curve-line").count() == 1
    assert page.locator("#curve-line-full").count() == 0
    assert page.locator("#rule-marginal").count() == 1
    assert page.locator("#plan-recipes").is_hidden()
    web.assert_offline()


def test_page_and_its_files_have_cache_headers_and_ship_as_package_data(sqlite_url: str) -> None:
    with TestClient(create_app()) as client:
        index = client.get("/")
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert index.headers["content-security-policy"].startswith("default-src 'self'")
        referenced = re.findall(r'(?:src|href)="static/app/([\w.]+)"', index.text)
        modules = {
            name
            for path in STATIC_DIR.glob("*.js")
            for name in re.findall(r'from "\./([\w.]+)"', path.read_text())
        }
        assert {"app.js", "style.css"} <= set(referenced)
        for name in {*referenced, *modules}:
            response = client.get(f"{STATIC_URL}/{name}")
            assert response.status_code == 200, name
            assert response.headers["cache-control"] == "no-cache"
            assert "etag" in response.headers
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["app.web"]
    for path in STATIC_DIR.iterdir():
        assert any(fnmatch(f"static/{path.name}", p) for p in patterns), path.name


def _job_body() -> str:
    """A small job on the server's tiny model folder and corpus (no worker runs it)."""
    return json.dumps(job_request(family=FAMILY))


def _submit(web: WebPage) -> None:
    web.page.locator("#job-body").fill(_job_body())
    web.page.get_by_role("button", name="Submit").click()


def test_jobs_view_submits_a_job_and_cancels_it(live_server: LiveServer, web: WebPage) -> None:
    page = web.page
    page.goto(f"{live_server.url}/#jobs")
    example = json.loads((ROOT / "examples" / "quick-job.json").read_text())
    assert json.loads(page.locator("#job-body").input_value()) == example
    _submit(web)
    result = page.locator("#job-result")
    result.get_by_text("is queued").wait_for()
    job_id = result.get_attribute("data-job-id")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "queued"
    assert "0 / 4.1k" in row.locator(".progress-cell").inner_text()
    row.get_by_role("button", name=f"Cancel job {job_id[:8]}").click()
    page.locator(f'tr[data-job-id="{job_id}"][data-status="cancelled"]').wait_for()
    web.screenshot("jobs")
    with live_server.client() as client:
        assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    web.assert_offline()


def _run_halfway(server: LiveServer, job_id: str, measured: dict[str, float], loss: float) -> None:
    """Do to the server's database what a worker does at a job's first checkpoint: claim it,
    record the measured model, half the tokens with an ETA, and one observed loss."""
    engine = create_engine_for(server.database_url)
    with make_sessionmaker(engine)() as session:
        assert jobs_repo.claim(session, job_id, "web-test", lease_s=600)
        jobs_repo.heartbeat(
            session,
            job_id,
            "web-test",
            lease_s=600,
            tokens_done=2048,
            eta_s=75.0,
            measured={
                **measured,
                "n_after": measured["n0"] * (1 - measured["rho"]),
                "loss_after_prune": loss + 1.0,
                "protocol": "eval-1",
            },
        )
        session.commit()
        row = {"run_id": job_id, "family": FAMILY, "method": "depth", **measured}
        add_observations(session, [{**row, "tokens": 2048.0, "loss": loss, "protocol": "eval-1"}])
    engine.dispose()


def test_jobs_view_follows_a_running_job_against_the_laws_forecast(
    live_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    with live_server.client() as client:
        job_id = client.post("/jobs/prune-finetune", json=json.loads(_job_body())).json()["id"]
        page.goto(f"{live_server.url}/#jobs")
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        row.wait_for()
        measured = {"n0": 1.0e9, "rho": 0.25, "l0": 2.2}
        _run_halfway(live_server, job_id, measured, loss=2.5)
        forecast = client.post(
            "/predict",
            json={
                "family": FAMILY,
                "method": "depth",
                "points": [{**measured, "tokens": 2048.0}],
                "interval": 0.8,
            },
        ).json()
    # The next poll (every 2 s) shows the progress, the ETA, the loss and the forecast.
    page.locator(f'tr[data-job-id="{job_id}"][data-status="running"]').wait_for()
    assert "2.05k / 4.1k" in row.locator(".progress-cell").inner_text()
    assert row.locator("progress").get_attribute("value") == "50"
    assert "1 min 15 s" in row.inner_text()
    row.locator(".forecast").get_by_text(f"{forecast['loss'][0]:.4f}").wait_for()
    assert "2.5000 at 2.05k" in row.locator(".latest").inner_text()
    assert f"[{forecast['lower'][0]:.4f}, {forecast['upper'][0]:.4f}]" in row.inner_text()
    row.get_by_role("button", name=f"Cancel job {job_id[:8]}").click()
    page.locator(f'tr[data-job-id="{job_id}"][data-status="cancelling"]').wait_for()
    web.assert_offline()


def test_writes_without_the_key_show_the_401_and_succeed_with_it(
    keyed_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{keyed_server.url}/#jobs")
    _submit(web)
    error = page.locator("#job-error")
    error.get_by_text("401").wait_for()
    assert "X-API-Key" in error.inner_text() and "API key" in error.inner_text()
    assert page.get_by_role("alert").filter(has_text="401").count() == 1

    page.get_by_label("API key").fill(keyed_server.api_key or "")
    _submit(web)
    page.locator("#job-result").get_by_text("is queued").wait_for()
    assert page.locator("#job-error").is_hidden()
    job_id = page.locator("#job-result").get_attribute("data-job-id")
    # The key is kept: after a reload the page still sends it.
    page.reload()
    page.locator(f'tr[data-job-id="{job_id}"]').wait_for()
    page.get_by_role("button", name=f"Cancel job {job_id[:8]}").click()
    page.locator(f'tr[data-job-id="{job_id}"][data-status="cancelled"]').wait_for()
    web.assert_offline()


def test_fits_view_lists_the_seeded_fits_with_their_coverage(
    live_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{live_server.url}/")
    page.get_by_role("tab", name="Planner").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Fits").get_attribute("aria-selected") == "true"
    with live_server.client() as client:
        fits = client.get("/fits").json()["items"]
    depth = next(f for f in fits if f["family"] == FAMILY and f["method"] == "depth")
    row = page.locator(f'tr[data-fit-id="{depth["id"]}"]')
    row.wait_for()
    assert "p2" in row.inner_text() and "default" in row.inner_text()
    shown = {c["protocol"] for c in depth["coverage"]}
    assert shown and all(row.locator(f'td[data-protocol="{p}"]').count() == 1 for p in shown)
    assert page.locator("#fits-table tbody tr").count() == len(fits)
    row.get_by_role("button").click()
    page.locator("#fit-details").get_by_text("Coverage of the intervals per protocol").wait_for()
    web.screenshot("fits")
    web.assert_offline()
