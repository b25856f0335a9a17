"""Recovery recipes through the API: observations carry one, a fit never mixes them, and
/predict, /recommend, /families and /plan choose and report by recipe."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import FAMILY, LAW, error_message, synthetic_observations, validation_error

#: LoRA recovers less than full post-training on the same runs: a higher floor.
LORA_LAW = {**LAW, "E": 0.12}


def _lora_rows(method: str = "depth") -> list[dict[str, Any]]:
    rows = synthetic_observations(method, params=LORA_LAW, seed=7)
    return [{**row, "run_id": f"lora-{row['run_id']}", "recipe": "lora"} for row in rows]


@pytest.fixture
def with_lora(seeded_client: TestClient) -> dict[str, Any]:
    """The seeded database plus LoRA runs of depth and their default fit."""
    response = seeded_client.post("/observations", json={"observations": _lora_rows()})
    assert response.status_code == 201, response.text
    fit = seeded_client.post("/fits", json={"family": FAMILY, "method": "depth", "recipe": "lora"})
    assert fit.status_code == 201, fit.text
    return dict(fit.json())


def test_observations_store_list_and_filter_by_recipe(
    seeded_client: TestClient, with_lora: dict[str, Any]
) -> None:
    lora = seeded_client.get("/observations", params={"recipe": "lora", "limit": 1000}).json()
    assert lora["total"] == len(_lora_rows())
    assert {item["recipe"] for item in lora["items"]} == {"lora"}
    full = seeded_client.get("/observations", params={"recipe": "full", "limit": 1}).json()
    assert full["items"][0]["recipe"] == "full"
    everything = seeded_client.get("/observations", params={"limit": 1}).json()
    assert everything["total"] == full["total"] + lora["total"]
    bad = seeded_client.get("/observations", params={"recipe": "qlora"})
    assert validation_error(bad)["loc"] == ["query", "recipe"]


def test_a_json_observation_without_recipe_is_full_and_an_unknown_one_is_422(
    client: TestClient,
) -> None:
    row = synthetic_observations()[0]
    assert client.post("/observations", json={"observations": [row]}).status_code == 201
    assert client.get("/observations").json()["items"][0]["recipe"] == "full"
    bad = client.post("/observations", json={"observations": [{**row, "recipe": "adapters"}]})
    assert validation_error(bad)["loc"][-1] == "recipe"


def test_a_csv_upload_reads_its_optional_recipe_column(client: TestClient) -> None:
    text = (
        "run_id,family,method,n0,rho,l0,tokens,loss,recipe\n"
        "a,f,depth,1e9,0.25,2.5,1e8,2.7,distill\n"
        "b,f,depth,1e9,0.25,2.5,1e8,2.7,\n"
    )
    response = client.post("/observations", content=text, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    items = client.get("/observations").json()["items"]
    assert {item["run_id"]: item["recipe"] for item in items} == {"a": "distill", "b": "full"}


def test_a_fit_uses_only_its_recipe_and_defaults_are_per_recipe(
    seeded_client: TestClient, seeded: dict[str, str], with_lora: dict[str, Any]
) -> None:
    assert with_lora["recipe"] == "lora" and with_lora["is_default"]
    assert all(run.startswith("lora-") for run in with_lora["run_ids"])
    # Only the LoRA runs were fitted, although full runs of the same family and method exist.
    assert with_lora["n_observations"] == len(_lora_rows())
    # The full fit of depth stays its recipe's default.
    full = seeded_client.get(f"/fits/{seeded['depth']}").json()
    assert full["recipe"] == "full" and full["is_default"]
    listed = seeded_client.get("/fits", params={"recipe": "lora"}).json()
    assert [f["id"] for f in listed["items"]] == [with_lora["id"]]
    assert seeded_client.get("/fits", params={"recipe": "full"}).json()["total"] == 2
    nothing = seeded_client.post(
        "/fits", json={"family": FAMILY, "method": "width", "recipe": "distill"}
    )
    assert "recipe='distill'" in error_message(nothing, 422)


def test_families_list_recipes_and_one_method_entry_per_recipe(
    seeded_client: TestClient, seeded: dict[str, str], with_lora: dict[str, Any]
) -> None:
    family = seeded_client.get(f"/families/{FAMILY}").json()
    assert family["recipes"] == ["full", "lora"]
    entries = [(m["method"], m["recipe"], m["default_fit_id"]) for m in family["methods"]]
    assert entries == [
        ("depth", "full", seeded["depth"]),
        ("depth", "lora", with_lora["id"]),
        ("width", "full", seeded["width"]),
    ]


def test_a_family_with_full_runs_only_keeps_its_shape_plus_the_recipe(
    seeded_client: TestClient,
) -> None:
    family = seeded_client.get(f"/families/{FAMILY}").json()
    assert family["recipes"] == ["full"]
    assert [(m["method"], m["recipe"]) for m in family["methods"]] == [
        ("depth", "full"),
        ("width", "full"),
    ]


POINTS = [{"n0": 1.0e9, "rho": 0.25, "l0": 2.2, "tokens": 1.0e9}]


def test_predict_and_recommend_pick_the_default_fit_of_the_recipe(
    seeded_client: TestClient, seeded: dict[str, str], with_lora: dict[str, Any]
) -> None:
    choice = {"family": FAMILY, "method": "depth"}
    full = seeded_client.post("/predict", json={**choice, "points": POINTS}).json()
    lora = seeded_client.post("/predict", json={**choice, "recipe": "lora", "points": POINTS})
    assert full["fit_id"] == seeded["depth"]
    assert lora.json()["fit_id"] == with_lora["id"]
    assert lora.json()["loss"][0] > full["loss"][0]  # the higher floor
    recommend = {**choice, "n0": 1e9, "rho": 0.25, "l0": 2.2, "rule": "gap", "threshold": 0.2}
    full_tokens = seeded_client.post("/recommend", json=recommend).json()
    lora_tokens = seeded_client.post("/recommend", json={**recommend, "recipe": "lora"}).json()
    assert lora_tokens["floor_loss"] > full_tokens["floor_loss"]
    missing = seeded_client.post("/predict", json={**choice, "recipe": "distill", "points": POINTS})
    assert "recipe='distill'" in error_message(missing, 422)


@pytest.mark.parametrize("route", ["/predict", "/recommend"])
def test_a_fit_id_of_another_recipe_than_the_one_given_is_a_422(
    seeded_client: TestClient, with_lora: dict[str, Any], route: str
) -> None:
    body: dict[str, Any] = (
        {"points": POINTS}
        if route == "/predict"
        else {"n0": 1e9, "rho": 0.25, "l0": 2.2, "rule": "gap", "threshold": 0.2}
    )
    wrong = seeded_client.post(route, json={**body, "fit_id": with_lora["id"], "recipe": "full"})
    message = error_message(wrong, 422)
    assert "'lora'" in message and "'full'" in message
    right = seeded_client.post(route, json={**body, "fit_id": with_lora["id"], "recipe": "lora"})
    assert right.status_code == 200, right.text
    # Without `recipe` a fit id answers as itself.
    assert seeded_client.post(route, json={**body, "fit_id": with_lora["id"]}).status_code == 200
    # The fit is cached now (the route's no-wait path): still refused for another recipe.
    again = seeded_client.post(route, json={**body, "fit_id": with_lora["id"], "recipe": "distill"})
    assert "'distill'" in error_message(again, 422)


def test_an_unknown_recipe_is_a_request_validation_422(seeded_client: TestClient) -> None:
    bad = seeded_client.post(
        "/predict",
        json={"family": FAMILY, "method": "depth", "recipe": "qlora", "points": POINTS},
    )
    assert validation_error(bad)["loc"] == ["body", "recipe"]


PLAN: dict[str, Any] = {
    "family": FAMILY,
    "n0": 1.0e9,
    "l0": 2.2,
    "rho_min": 0.2,
    "token_budget": 2.0e9,
    "max_options": 1000,
}


def test_plan_compares_recipes_and_states_each_options_flops(
    seeded_client: TestClient, seeded: dict[str, str], with_lora: dict[str, Any]
) -> None:
    body = seeded_client.post("/plan", json=PLAN).json()
    assert body["recipes"] == ["full", "lora"]
    assert body["methods"] == ["depth", "width"]
    kinds = {(o["method"], o["recipe"]) for o in body["options"]}
    assert kinds == {("depth", "full"), ("depth", "lora"), ("width", "full")}
    for option in body["options"]:
        per_token = {"full": 6.0, "lora": 4.0}[option["recipe"]] * option["n_after"]
        assert option["flops"] == pytest.approx(option["tokens"] * per_token)
        if option["recipe"] == "lora":
            assert option["fit_id"] == with_lora["id"]
    losses = [o["predicted_loss"] for o in body["options"]]
    assert losses == sorted(losses)  # ranked by loss, as before recipes


def test_plan_on_chosen_recipes_and_the_refusals(
    seeded_client: TestClient, with_lora: dict[str, Any]
) -> None:
    only = seeded_client.post("/plan", json={**PLAN, "recipes": ["lora"]}).json()
    assert only["recipes"] == ["lora"] and only["methods"] == ["depth"]
    assert {o["recipe"] for o in only["options"]} == {"lora"}
    partly = seeded_client.post("/plan", json={**PLAN, "recipes": ["lora", "distill"]}).json()
    assert partly["recipes"] == ["lora"]
    assert any("distill" in w for w in partly["warnings"])
    unknown = seeded_client.post("/plan", json={**PLAN, "recipes": ["qlora"]})
    assert validation_error(unknown)["loc"] == ["body", "recipes", 0]
    none = seeded_client.post("/plan", json={**PLAN, "recipes": ["distill"]})
    assert "no method to plan with" in error_message(none, 422)


def test_plan_on_full_runs_only_answers_as_before_with_the_new_fields(
    seeded_client: TestClient,
) -> None:
    body = seeded_client.post("/plan", json=PLAN).json()
    assert body["recipes"] == ["full"]
    assert {o["recipe"] for o in body["options"]} == {"full"}
    best = body["best"]
    assert best["flops"] == pytest.approx(6.0 * best["n_after"] * best["tokens"])
