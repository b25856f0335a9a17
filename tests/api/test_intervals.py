"""Interval kinds on /predict, /recommend and /plan, and the coverage a fit reports
(docs/api.md, docs/law.md §4)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db.models.fit import Fit
from app.db.session import session_scope
from app.services.lawref import fit_cache
from app.services.predict import UNCALIBRATED
from tests.api.conftest import FAMILY, validation_error

POINTS = [{"n0": 1.0e9, "rho": 0.25, "l0": 2.5, "tokens": t} for t in (2e7, 2e8, 2e9)]


def predict(client: TestClient, fit_id: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/predict", json={"fit_id": fit_id, "points": POINTS, "interval": 0.8, **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_fit_with_a_bootstrap_reports_its_coverage_per_protocol(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    fit = seeded_client.get(f"/fits/{seeded['depth']}").json()
    by_protocol = {c["protocol"]: c for c in fit["coverage"]}
    assert set(by_protocol) == {"D", "N0", "rho"}
    for c in by_protocol.values():
        assert c["level"] == 0.8
        assert 0.0 <= c["prediction"] <= 1.0 and c["points"] > 0 and c["runs"] > 0
        assert 0.0 < c["mape"] < 5.0  # synthetic data from the law itself, 0.3% noise
    # Without a bootstrap there are no intervals, so nothing to cover.
    assert seeded_client.get(f"/fits/{seeded['width']}").json()["coverage"] == []


def test_coverage_is_measured_at_the_level_the_fit_asks_for(
    seeded_client: TestClient,
) -> None:
    response = seeded_client.post(
        "/fits",
        json={"family": FAMILY, "method": "depth", "bootstrap": 5, "interval": 0.5},
    )
    assert response.status_code == 201, response.text
    assert {c["level"] for c in response.json()["coverage"]} == {0.5}


def test_prediction_intervals_are_the_default_and_wider_than_the_confidence_band(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    default = predict(seeded_client, seeded["depth"])
    prediction = predict(seeded_client, seeded["depth"], interval_kind="prediction")
    confidence = predict(seeded_client, seeded["depth"], interval_kind="confidence")
    assert default == prediction
    assert default["loss"] == confidence["loss"]
    for key in ("prediction", "confidence"):
        body = prediction if key == "prediction" else confidence
        assert all(
            lo <= mid <= hi
            for lo, mid, hi in zip(body["lower"], body["loss"], body["upper"], strict=True)
        )
    assert sum(
        h - lo for lo, h in zip(prediction["lower"], prediction["upper"], strict=True)
    ) > sum(h - lo for lo, h in zip(confidence["lower"], confidence["upper"], strict=True))
    assert prediction["lower"] != confidence["lower"]


def test_a_fit_made_before_calibrated_intervals_gives_the_confidence_band_and_says_so(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    with session_scope() as session:
        session.execute(update(Fit).where(Fit.id == seeded["depth"]).values(calibration=None))
    fit_cache.clear()
    body = predict(seeded_client, seeded["depth"])
    assert UNCALIBRATED in body["warnings"]
    assert (
        body["lower"]
        == predict(seeded_client, seeded["depth"], interval_kind="confidence")["lower"]
    )


def test_an_unknown_interval_kind_is_a_422_naming_the_field(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    response = seeded_client.post(
        "/predict",
        json={"fit_id": seeded["depth"], "points": POINTS, "interval": 0.8, "interval_kind": "x"},
    )
    assert response.status_code == 422
    assert validation_error(response)["loc"][-1] == "interval_kind"


def test_the_target_rule_gives_the_tokens_within_which_a_run_reaches_the_target(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    request = {
        "family": FAMILY,
        "method": "depth",
        "n0": 1.0e9,
        "rho": 0.25,
        "l0": 2.5,
        "rule": "target",
        "target_loss": 2.72,
        "interval": 0.8,
    }
    response = seeded_client.post("/recommend", json=request)
    assert response.status_code == 200, response.text
    prediction = response.json()
    confidence = seeded_client.post(
        "/recommend", json={**request, "interval_kind": "confidence"}
    ).json()
    low, high = prediction["tokens_interval"]
    assert low < prediction["tokens"] < high
    c_low, c_high = confidence["tokens_interval"]
    assert low <= c_low and high >= c_high
    # The curve's band is the prediction band at each of its token counts.
    at = [p for p in prediction["curve"] if p["tokens"] == pytest.approx(prediction["tokens"])]
    assert at and at[0]["lower"] <= request["target_loss"] <= at[0]["upper"]


def test_plan_options_carry_prediction_intervals_by_default(
    seeded_client: TestClient,
) -> None:
    request = {
        "family": FAMILY,
        "n0": 1.0e9,
        "l0": 2.5,
        "rho_min": 0.2,
        "token_budget": 1e9,
        "interval": 0.8,
        "methods": ["depth"],
    }
    prediction = seeded_client.post("/plan", json=request).json()
    confidence = seeded_client.post("/plan", json={**request, "interval_kind": "confidence"}).json()
    assert [o["predicted_loss"] for o in prediction["options"]] == [
        o["predicted_loss"] for o in confidence["options"]
    ]
    width = {
        kind: sum(o["upper"] - o["lower"] for o in body["options"])
        for kind, body in (("prediction", prediction), ("confidence", confidence))
    }
    assert width["prediction"] > width["confidence"]


def test_a_fit_may_skip_the_coverage_measurement_and_still_give_prediction_intervals(
    seeded_client: TestClient,
) -> None:
    response = seeded_client.post(
        "/fits",
        json={"family": FAMILY, "method": "depth", "bootstrap": 5, "measure_coverage": False},
    )
    assert response.status_code == 201, response.text
    fit = response.json()
    assert fit["coverage"] == []
    body = predict(seeded_client, fit["id"])
    assert UNCALIBRATED not in body["warnings"]
    assert all(lo < hi for lo, hi in zip(body["lower"], body["upper"], strict=True))


def test_a_point_of_a_fitted_run_is_forecast_from_that_run_and_says_so(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    run = seeded_client.get("/observations", params={"family": FAMILY, "method": "depth"}).json()
    first = run["items"][0]
    point = {k: first[k] for k in ("n0", "rho", "l0")} | {"tokens": first["tokens"] * 100}
    body = seeded_client.post(
        "/predict", json={"fit_id": seeded["depth"], "points": [point]}
    ).json()
    assert any(first["run_id"] in w and "continue" in w for w in body["warnings"])
    new = seeded_client.post(
        "/predict", json={"fit_id": seeded["depth"], "points": [POINTS[0]]}
    ).json()
    assert not any("continue" in w for w in new["warnings"])
