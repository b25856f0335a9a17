"""POST /predict: law choice, points/columns, intervals, warnings, limits (docs/api.md)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi import Body
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.db.models.fit import Fit
from app.db.session import create_engine_for, session_scope
from app.main import create_app
from app.repositories import fits as fits_repo
from app.schemas.predict import PredictRequest
from tests.api.conftest import FAMILY, LAW, error_message, strict_json, validation_error

#: Certified values (p2-vectors.json) for LAW: raw counts in, loss out.
CERTIFIED = [
    {"n0": 1000000000.0, "rho": 0.25, "l0": 2.5, "tokens": 100000000.0, "loss": 2.7022955896745358},
    {
        "n0": 8030000000.0,
        "rho": 0.15,
        "l0": 2.1,
        "tokens": 3000000000.0,
        "loss": 2.1585932581034935,
    },
    {"n0": 500000000.0, "rho": 0.35, "l0": 3.0, "tokens": 10000000.0, "loss": 3.400553690937095},
    {"n0": 386112, "rho": 0.12, "l0": 1.34, "tokens": 2048, "loss": 9.110360104720986},
    {
        "n0": 72000000000.0,
        "rho": 0.5,
        "l0": 1.9,
        "tokens": 10000000000.0,
        "loss": 1.9729985613492886,
    },
]
POINT = {"n0": 1.0e9, "rho": 0.25, "l0": 2.5, "tokens": 1.0e8}
INLINE = {"form": "p2", "params": LAW}


def test_inline_law_reproduces_the_certified_predictions(client: TestClient) -> None:
    cases = CERTIFIED
    points = [{k: c[k] for k in ("n0", "rho", "l0", "tokens")} for c in cases]
    response = client.post("/predict", json={"law": INLINE, "points": points})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"form", "fit_id", "loss", "lower", "upper", "warnings"}
    assert body["form"] == "p2" and body["fit_id"] is None
    assert body["lower"] is None and body["upper"] is None
    for got, case in zip(body["loss"], cases, strict=True):
        assert got == pytest.approx(case["loss"], rel=1e-9)


def test_columns_give_the_same_losses_as_points_in_input_order(client: TestClient) -> None:
    points = [{**POINT, "tokens": t} for t in (3e9, 1e7, 1e8)]
    columns = {k: [p[k] for p in points] for k in ("n0", "rho", "l0", "tokens")}
    by_points = client.post("/predict", json={"law": INLINE, "points": points}).json()
    by_columns = client.post("/predict", json={"law": INLINE, "columns": columns}).json()
    assert by_points["loss"] == by_columns["loss"]
    assert by_points["loss"][1] > by_points["loss"][2] > by_points["loss"][0]


def test_stored_fit_by_id_and_default_fit_by_family_method(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    by_id = seeded_client.post("/predict", json={"fit_id": seeded["depth"], "points": [POINT]})
    assert by_id.status_code == 200, by_id.text
    by_default = seeded_client.post(
        "/predict", json={"family": FAMILY, "method": "depth", "points": [POINT]}
    )
    assert by_default.json()["fit_id"] == seeded["depth"]
    assert by_default.json()["loss"] == by_id.json()["loss"]
    # The synthetic data came from LAW with 0.3% noise: the fit predicts inside the data within 1%.
    inline = seeded_client.post("/predict", json={"law": INLINE, "points": [POINT]}).json()
    assert by_id.json()["loss"][0] == pytest.approx(inline["loss"][0], rel=0.01)


def test_interval_comes_from_bootstrap_refits(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    points = [{**POINT, "tokens": t} for t in (2e7, 2e8, 2e9)]
    body = seeded_client.post(
        "/predict", json={"fit_id": seeded["depth"], "points": points, "interval": 0.8}
    ).json()
    assert body["lower"] is not None and body["upper"] is not None
    for low, mid, high in zip(body["lower"], body["loss"], body["upper"], strict=True):
        assert low <= high
        assert low <= mid * 1.01 and high >= mid * 0.99


def test_interval_without_refits_is_null_with_a_warning(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    body = seeded_client.post(
        "/predict", json={"fit_id": seeded["width"], "points": [POINT], "interval": 0.8}
    ).json()
    assert body["lower"] is None and body["upper"] is None
    assert any("bootstrap" in w for w in body["warnings"])


def test_extrapolation_outside_the_fit_ranges_warns(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    far = {"n0": 7.0e10, "rho": 0.6, "l0": 1.8, "tokens": 1.0e12}
    body = seeded_client.post("/predict", json={"fit_id": seeded["depth"], "points": [far]}).json()
    assert body["warnings"], body
    # The synthetic runs have n0 = 1e9 with l0 = 2.0 + 0.3·log10(4).
    seen = {"n0": 1.0e9, "rho": 0.25, "l0": 2.18, "tokens": 1.0e8}
    inside = seeded_client.post(
        "/predict", json={"fit_id": seeded["depth"], "points": [seen]}
    ).json()
    assert inside["warnings"] == []


def test_no_law_chosen_is_a_422_that_says_how_to_choose(client: TestClient) -> None:
    response = client.post("/predict", json={"points": [POINT]})
    message = error_message(response, 422)
    assert "fit_id" in message and "family" in message


def test_family_method_without_a_default_fit_is_a_422(client: TestClient) -> None:
    response = client.post(
        "/predict", json={"family": "nope", "method": "depth", "points": [POINT]}
    )
    assert "POST /fits" in error_message(response, 422)


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"law": INLINE}, ["body"], "give exactly one of `points` and `columns`"),
        (
            {"law": INLINE, "points": [POINT], "columns": {k: [v] for k, v in POINT.items()}},
            ["body"],
            "give exactly one of `points` and `columns`",
        ),
        (
            {"law": INLINE, "fit_id": "abc", "points": [POINT]},
            ["body"],
            "give at most one of `fit_id` and `law`",
        ),
        (
            {
                "law": INLINE,
                "columns": {"n0": [1e9, 1e9], "rho": [0.2], "l0": [2.0], "tokens": [1e8]},
            },
            ["body", "columns"],
            "columns must have equal lengths",
        ),
        (
            {"law": {"form": "nope", "params": LAW}, "points": [POINT]},
            ["body", "law", "form"],
            "unknown form 'nope'",
        ),
        (
            {"law": INLINE, "points": [{**POINT, "rho": 1.0}]},
            ["body", "points", 0, "rho"],
            "less than 1",
        ),
        (
            {"law": INLINE, "points": [{**POINT, "rho": 0.0}]},
            ["body", "points", 0, "rho"],
            "greater than 0",
        ),
        (
            {"law": INLINE, "points": [{**POINT, "n0": 0}]},
            ["body", "points", 0, "n0"],
            "greater than 0",
        ),
        (
            {"law": INLINE, "points": [{**POINT, "tokens": -5}]},
            ["body", "points", 0, "tokens"],
            "greater than 0",
        ),
        (
            {"law": INLINE, "points": [{**POINT, "l0": 0}]},
            ["body", "points", 0, "l0"],
            "greater than 0",
        ),
        ({"law": INLINE, "points": [POINT], "interval": 1.0}, ["body", "interval"], "less than 1"),
    ],
    ids=[
        "no-points",
        "points-and-columns",
        "fit-id-and-law",
        "columns-unequal",
        "unknown-form",
        "rho-one",
        "rho-zero",
        "n0-zero",
        "tokens-negative",
        "l0-zero",
        "interval-one",
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: TestClient, body: dict[str, object], loc: list[object], says: str
) -> None:
    error = validation_error(client.post("/predict", json=body))
    assert error["loc"] == loc
    assert says in error["msg"]


def test_an_inline_law_missing_parameters_is_a_422_naming_them(client: TestClient) -> None:
    law = {"form": "p2", "params": {"N_C": 1.0}}
    response = client.post("/predict", json={"law": law, "points": [POINT]})
    assert "(missing D_C, E, alpha, beta, gamma, delta)" in error_message(response, 422)


def test_overflowing_inline_law_is_a_422_not_a_non_finite_response(client: TestClient) -> None:
    # The law's own term is clipped at e^700; an l0 at the top of the float range then sums to
    # infinity, which strict JSON cannot carry.
    params = {**LAW, "gamma": 3.0, "delta": -3.0, "D_C": 1e300, "beta": 3.0}
    point = {"n0": 1e3, "rho": 1e-300, "l0": 1.7976e308, "tokens": 1.0}
    response = client.post(
        "/predict", json={"law": {"form": "p2", "params": params}, "points": [point]}
    )
    message = error_message(response, 422)
    assert message.startswith("the law gives a non-finite loss at index 0")


def test_a_law_term_past_exp_700_is_clipped_to_a_finite_loss(client: TestClient) -> None:
    params = {**LAW, "gamma": 3.0, "delta": -3.0, "D_C": 1e300, "beta": 3.0}
    point = {"n0": 1e3, "rho": 1e-300, "l0": 2.0, "tokens": 1.0}
    response = client.post(
        "/predict", json={"law": {"form": "p2", "params": params}, "points": [point]}
    )
    assert response.status_code == 200, response.text
    assert strict_json(response.text)["loss"] == [pytest.approx(2.0 + math.exp(700), rel=1e-12)]


def test_unknown_fit_id_is_404(client: TestClient) -> None:
    response = client.post("/predict", json={"fit_id": "0" * 32, "points": [POINT]})
    assert error_message(response, 404) == f"no fit with id '{'0' * 32}'"


def test_too_many_points_is_413_with_the_limit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_POINTS", "10")
    get_settings.cache_clear()
    response = client.post("/predict", json={"law": INLINE, "points": [POINT] * 11})
    message = error_message(response, 413)
    assert message == "11 points in one request; the limit is 10: split the request"
    assert client.post("/predict", json={"law": INLINE, "points": [POINT] * 10}).status_code == 200


def test_by_default_100000_points_are_accepted_and_one_more_is_a_413(client: TestClient) -> None:
    n = 100_000
    columns = {"n0": [1e9] * n, "rho": [0.25] * n, "l0": [2.5] * n, "tokens": [1e8] * n}
    response = client.post("/predict", json={"law": INLINE, "columns": columns})
    assert response.status_code == 200
    assert len(response.json()["loss"]) == n
    more = {name: [*values, values[0]] for name, values in columns.items()}
    response = client.post("/predict", json={"law": INLINE, "columns": more})
    assert "the limit is 100000" in error_message(response, 413)


def test_the_route_parses_its_body_into_the_same_answers_as_fastapi(sqlite_url: str) -> None:
    """/predict parses its own body (pydantic-core, one pass); an endpoint that takes the same
    model the usual way accepts the same bodies and refuses the others with the same errors."""
    app = create_app()

    @app.post("/reference")
    async def reference(body: PredictRequest = Body(...)) -> dict[str, str]:
        return {"ok": "parsed"}

    point, law = json.dumps(POINT), json.dumps(INLINE)
    good = f'{{"law": {law}, "points": [{point}]}}'
    json_type = "application/json"
    bodies: list[tuple[bytes, str | None]] = [
        (b"", json_type),
        (b"{not json", json_type),
        (b" ", json_type),
        (b"[]", json_type),
        (b"3", json_type),
        (b"{}", json_type),
        (f'{{"law": {law}}}'.encode(), json_type),
        (f'{{"law": {law}, "points": [{point}], "columns": {{}}}}'.encode(), json_type),
        (f'{{"law": {law}, "points": [{{"n0": -1}}]}}'.encode(), json_type),
        (f'{{"law": {law}, "points": {point}}}'.encode(), json_type),
        (f'{{"law": {law}, "points": [{point}], "interval": 1.5}}'.encode(), json_type),
        (f'{{"law": {law}, "points": [{point}], "extra": 1}}'.encode(), json_type),
        (f'{{"fit_id": 3, "points": [{point}]}}'.encode(), json_type),
        (good.replace("1000000000.0", "NaN").encode(), json_type),
        (good.encode(), None),
        (good.encode(), "text/plain"),
        (good.encode(), "text/json"),
        # Accepted by both:
        (good.encode(), "application/json; charset=utf-8"),
        (good.encode(), "application/vnd.p2law+json"),
        (good.encode("utf-16"), json_type),  # json.loads reads UTF-16; pydantic-core does not
        (good.replace("1000000000.0", '"1e9"').encode(), json_type),
    ]
    with TestClient(app) as client:
        for raw, content_type in bodies:
            headers = {} if content_type is None else {"content-type": content_type}
            ours = client.post("/predict", content=raw, headers=headers)
            theirs = client.post("/reference", content=raw, headers=headers)
            assert ours.status_code in (200, 422), (raw, ours.text)
            assert ours.status_code == theirs.status_code, (raw, ours.text, theirs.text)
            if ours.status_code == 422:
                assert ours.json() == theirs.json(), (raw, content_type)


def test_a_cached_stored_fit_is_answered_on_the_event_loop_and_a_new_default_at_once(
    seeded_client: TestClient, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the read of which fit answers waits for no lock, so once the fit is cached the
    request needs no worker thread; the read still happens every time."""
    import app.api.routes.predict as route

    hops: list[object] = []
    real = route.run_in_threadpool

    async def counting(func: Any, *args: Any) -> Any:
        hops.append(func)
        return await real(func, *args)

    monkeypatch.setattr(route, "run_in_threadpool", counting)
    body = {"family": FAMILY, "method": "depth", "points": [POINT], "interval": 0.8}
    first = seeded_client.post("/predict", json=body).json()
    assert first["fit_id"] == seeded["depth"] and len(hops) == 1  # loaded in a worker thread
    again = seeded_client.post("/predict", json=body).json()
    assert again == first and len(hops) == 1  # cached: answered on the loop
    # Another process makes a copy of the width fit the depth default: the next request sees it.
    engine = create_engine_for(get_settings().database_url)
    try:
        with session_scope(engine) as session:
            width = fits_repo.get(session, seeded["width"])
            assert width is not None
            copy = Fit(
                **{
                    c.name: getattr(width, c.name)
                    for c in Fit.__table__.columns
                    if c.name not in ("id", "is_default", "created_at")
                }
            )
            copy.method = "depth"
            fits_repo.add(session, copy)
            fits_repo.set_default(session, copy)
            new_id = copy.id
    finally:
        engine.dispose()
    changed = seeded_client.post("/predict", json=body).json()
    assert changed["fit_id"] == new_id and changed["loss"] != first["loss"]
    back = seeded_client.post("/predict", json={**body, "fit_id": seeded["depth"]}).json()
    assert back["loss"] == first["loss"]
