"""POST /plan: ranked (method, ρ, tokens) options from the family's default fits."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import FAMILY, error_message, validation_error

REQUEST: dict[str, Any] = {
    "family": FAMILY,
    "n0": 1.0e9,
    "l0": 2.2,
    "rho_min": 0.2,
    "token_budget": 2.0e9,
}


def test_options_are_ranked_within_the_limits_and_best_is_first(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    response = seeded_client.post("/plan", json=REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["methods"] == ["depth", "width"]
    options = body["options"]
    assert options and body["best"] == options[0]
    losses = [o["predicted_loss"] for o in options]
    assert losses == sorted(losses)
    for option in options:
        assert option["rho"] >= REQUEST["rho_min"] - 1e-12
        assert option["tokens"] <= REQUEST["token_budget"] * (1 + 1e-12)
        assert option["n_after"] == pytest.approx(REQUEST["n0"] * (1 - option["rho"]))
        assert option["fit_id"] == seeded[option["method"]]


def test_explicit_grids_and_interval(seeded_client: TestClient, seeded: dict[str, str]) -> None:
    body = seeded_client.post(
        "/plan",
        json={
            **REQUEST,
            "methods": ["depth"],
            "rho_grid": [0.2, 0.3],
            "token_grid": [1.0e8, 1.0e9],
            "interval": 0.8,
            "max_options": 3,
        },
    ).json()
    assert body["methods"] == ["depth"]
    assert len(body["options"]) == 3
    assert {o["rho"] for o in body["options"]} <= {0.2, 0.3}
    assert all(o["lower"] is not None and o["lower"] <= o["upper"] for o in body["options"])


def test_a_requested_method_without_fit_is_left_out_with_a_warning(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    body = seeded_client.post("/plan", json={**REQUEST, "methods": ["depth", "2:4"]}).json()
    assert body["methods"] == ["depth"]
    assert any("2:4" in w for w in body["warnings"])


def test_no_method_with_a_fit_is_422(client: TestClient) -> None:
    response = client.post("/plan", json=REQUEST)
    assert "POST /fits" in error_message(response, 422)


@pytest.mark.parametrize(
    ("extra", "loc", "says"),
    [
        ({"rho_min": 1.0}, ["body", "rho_min"], "less than 1"),
        ({"token_budget": 0}, ["body", "token_budget"], "greater than 0"),
        ({"rho_grid": [0.1]}, ["body"], "rho_grid has no value >= rho_min"),
        ({"token_grid": [5e9]}, ["body"], "token_grid has no value <= token_budget"),
    ],
    ids=["rho-min-one", "zero-budget", "grid-below-rho-min", "grid-above-budget"],
)
def test_bad_limits_are_422_saying_which(
    client: TestClient, extra: dict[str, object], loc: list[str], says: str
) -> None:
    error = validation_error(client.post("/plan", json={**REQUEST, **extra}))
    assert error["loc"] == loc
    assert says in error["msg"]


def test_every_option_and_the_best_state_how_far_beyond_the_observed_tokens_they_lie(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    observed = {
        method: seeded_client.get(f"/fits/{fit_id}").json()["ranges"]["tokens"][1]
        for method, fit_id in seeded.items()
    }
    inside = seeded_client.post(
        "/plan", json={**REQUEST, "token_budget": min(observed.values()), "max_options": 200}
    ).json()
    for option in inside["options"]:
        factor = option["tokens"] / observed[option["method"]]
        assert option["beyond_observed"] == pytest.approx(factor, rel=1e-12)
        assert option["beyond_observed"] <= 1 + 1e-12
    assert inside["best"] == inside["options"][0]
    assert not any("extrapolation" in w for w in inside["warnings"])

    budget = 100 * max(observed.values())
    far = seeded_client.post("/plan", json={**REQUEST, "token_budget": budget}).json()
    best = far["best"]
    assert best["tokens"] == pytest.approx(budget)
    assert best["beyond_observed"] == pytest.approx(budget / observed[best["method"]])
    assert best["beyond_observed"] > 10
    flagged = [w for w in far["warnings"] if "extrapolation" in w]
    assert any(w.startswith(f"best: {budget:,.0f} tokens") for w in flagged), far["warnings"]
    for method in far["methods"]:
        many = sum(1 for o in far["options"] if o["method"] == method and o["beyond_observed"] > 10)
        if many:
            assert any(w.startswith(f"{method}: {many} of ") for w in flagged), far["warnings"]
