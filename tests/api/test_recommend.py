"""POST /recommend: the three rules, the cap, the curve, intervals, unreachable targets."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import FAMILY, LAW, error_message, validation_error

BASE = {"law": {"form": "p2", "params": LAW}, "n0": 1.0e9, "rho": 0.25, "l0": 2.5}
#: Certified answers (p2-vectors.json) for LAW at BASE: rule arguments -> tokens, predicted loss.
CERTIFIED = [
    ({"rule": "marginal", "threshold": 0.05}, 163275617.557301, 2.697759899487003),
    ({"rule": "gap", "threshold": 0.01}, 435275281.648062, 2.691432337731273),
    ({"rule": "target", "target_loss": 2.701432337731273}, 108818820.4120155, 2.701432337731273),
]
FLOOR = 2.6814323377312728


@pytest.mark.parametrize(("rule", "tokens", "loss"), CERTIFIED, ids=["marginal", "gap", "target"])
def test_rules_reproduce_the_certified_answers(
    client: TestClient, rule: dict[str, object], tokens: float, loss: float
) -> None:
    response = client.post("/recommend", json={**BASE, **rule})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "tokens",
        "predicted_loss",
        "floor_loss",
        "capped",
        "tokens_interval",
        "curve",
        "warnings",
    }
    assert body["tokens"] == pytest.approx(tokens, rel=1e-6)
    assert body["predicted_loss"] == pytest.approx(loss, rel=1e-6)
    assert body["floor_loss"] == pytest.approx(FLOOR, rel=1e-9)
    assert body["capped"] is False and body["tokens_interval"] is None


def test_curve_is_log_spaced_around_the_answer_and_decreasing(client: TestClient) -> None:
    body = client.post("/recommend", json={**BASE, "rule": "gap", "threshold": 0.01}).json()
    tokens = np.array([p["tokens"] for p in body["curve"]])
    losses = np.array([p["loss"] for p in body["curve"]])
    assert tokens.min() < body["tokens"] < tokens.max()
    assert np.allclose(np.diff(np.log(tokens)), np.log(tokens[1] / tokens[0]))
    assert np.all(np.diff(losses) < 0)
    assert np.all(losses > body["floor_loss"])
    assert all(p["lower"] is None and p["upper"] is None for p in body["curve"])


def test_max_tokens_caps_the_answer(client: TestClient) -> None:
    body = client.post(
        "/recommend", json={**BASE, "rule": "gap", "threshold": 0.01, "max_tokens": 1.0e8}
    ).json()
    assert body["capped"] is True
    assert body["tokens"] == pytest.approx(1.0e8)


def test_unreachable_target_is_422_with_the_floor(client: TestClient) -> None:
    response = client.post("/recommend", json={**BASE, "rule": "target", "target_loss": 2.6})
    message = error_message(response, 422)
    assert "unreachable" in message and "2.68143" in message
    body = response.json()
    assert body["floor_loss"] == pytest.approx(FLOOR, rel=1e-9)
    assert body["target_loss"] == 2.6


@pytest.mark.parametrize(
    ("extra", "loc", "says"),
    [
        ({"rule": "gap"}, ["body"], "rule 'gap' needs `threshold`"),
        ({"rule": "target"}, ["body"], "rule 'target' needs `target_loss`"),
        ({"rule": "marginal", "threshold": 0}, ["body", "threshold"], "greater than 0"),
        ({"rule": "x"}, ["body", "rule"], "'marginal', 'gap' or 'target'"),
    ],
    ids=["gap-no-threshold", "target-no-loss", "zero-threshold", "unknown-rule"],
)
def test_missing_or_bad_rule_arguments_are_422_saying_which(
    client: TestClient, extra: dict[str, object], loc: list[str], says: str
) -> None:
    error = validation_error(client.post("/recommend", json={**BASE, **extra}))
    assert error["loc"] == loc
    assert says in error["msg"]


def test_default_fit_with_bootstrap_gives_a_token_interval_and_curve_bands(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    request = {
        "family": FAMILY,
        "method": "depth",
        "n0": 1.0e9,
        "rho": 0.25,
        "l0": 2.2,
        "rule": "gap",
        "threshold": 0.01,
        "interval": 0.8,
    }
    response = seeded_client.post("/recommend", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    low, high = body["tokens_interval"]
    assert low <= high
    assert all(p["lower"] is not None and p["upper"] is not None for p in body["curve"])


def test_unknown_fit_is_404(client: TestClient) -> None:
    response = client.post(
        "/recommend",
        json={
            "fit_id": "f" * 32,
            "n0": 1e9,
            "rho": 0.25,
            "l0": 2.5,
            "rule": "gap",
            "threshold": 0.1,
        },
    )
    assert error_message(response, 404) == f"no fit with id '{'f' * 32}'"


@pytest.mark.parametrize("form", ["p2", "p2-tpp", "p2-shift"])
@pytest.mark.parametrize("beta", [0.0, -1.0])
@pytest.mark.parametrize(
    "rule", [{"rule": "marginal", "threshold": 0.05}, {"rule": "gap", "threshold": 0.01}]
)
def test_a_law_whose_d_term_does_not_fall_is_answered_not_a_500(
    client: TestClient, form: str, beta: float, rule: dict[str, object]
) -> None:
    """β ≤ 0 (found by schemathesis: a 500 from dividing by β): the numeric path answers."""
    params = {**LAW, "beta": beta}
    if form == "p2-tpp":
        params = {k: v for k, v in params.items() if k != "delta"} | {"T_s": 1.0}
    elif form == "p2-shift":
        params = {**params, "D_s": 0.001}
    response = client.post(
        "/recommend", json={**BASE, "law": {"form": form, "params": params}, **rule}
    )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert "1e15" in error_message(response, 422) or "not met" in response.text


@pytest.mark.parametrize("max_tokens", [5e-324, 1e-310])
def test_a_cap_so_small_its_curve_would_underflow_is_answered_not_a_500(
    client: TestClient, max_tokens: float
) -> None:
    """Found by schemathesis: two decades below a subnormal cap are 0, and a log grid cannot
    hold 0."""
    body = {**BASE, "rule": "marginal", "threshold": 0.05, "max_tokens": max_tokens}
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["capped"] is True and out["tokens"] == max_tokens
    assert all(p["tokens"] > 0 for p in out["curve"])
