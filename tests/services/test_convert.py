"""Rows <-> law types."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from app.core.errors import Unprocessable
from app.db.models.fit import Fit
from app.db.models.observation import Observation
from app.law.types import Dataset, Metrics, Ranges
from app.services.convert import (
    finite_list,
    fit_out,
    metrics_dict,
    points_to_features,
    ranges_from_dict,
)


def _row(run_id: str, tokens: float, protocol: str = "p") -> Observation:
    return Observation(
        run_id=run_id,
        family="f",
        method="depth",
        n0=1e9,
        rho=0.25,
        l0=2.5,
        tokens=tokens,
        loss=2.7,
        protocol=protocol,
    )


def test_stored_observations_become_a_dataset_with_their_labels() -> None:
    data = Dataset.from_rows([_row("b", 1e7), _row("a", 1e7), _row("b", 1e8, protocol="q")])
    assert data.run_ids == ("b", "a") and data.run.tolist() == [0, 1, 0]
    assert data.family == ("f", "f", "f") and data.protocol == ("p", "p", "q")


def test_points_become_columns_in_input_order() -> None:
    x = points_to_features(
        [
            {"n0": 1.0, "rho": 0.1, "l0": 2.0, "tokens": 3.0},
            {"n0": 4.0, "rho": 0.2, "l0": 5.0, "tokens": 6.0},
        ]
    )
    assert x.n0.tolist() == [1.0, 4.0] and x.tokens.tolist() == [3.0, 6.0]
    assert len(points_to_features([])) == 0


def test_ranges_survive_a_round_trip_through_their_dict() -> None:
    ranges = Ranges((1.0, 2.0), (0.1, 0.3), (2.0, 3.0), (1e7, 1e9), ("f",), ("depth",), ("p",))
    assert ranges_from_dict(ranges.as_dict()) == ranges


def test_non_finite_law_output_is_a_422() -> None:
    assert finite_list(np.array([1.0, 2.0]), "loss") == [1.0, 2.0]
    with pytest.raises(Unprocessable, match="non-finite loss at index 1"):
        finite_list(np.array([1.0, np.inf]), "loss")


def test_undefined_metrics_become_null() -> None:
    out = metrics_dict(Metrics(r2=math.nan, rmse=0.1, mape=0.2, huber=0.0, asd=math.inf))
    assert out == {"r2": None, "rmse": 0.1, "mape": 0.2, "huber": 0.0, "asd": None}
    fit = Fit(
        id="x" * 32,
        form="p2",
        family=None,
        method=None,
        protocol=None,
        run_ids=["a"],
        params={"E": 0.1},
        objective=math.nan,
        converged=True,
        message="ok",
        n_starts=1,
        n_observations=3,
        n_runs=1,
        metrics={"r2": math.nan, "rmse": 0.1, "mape": 0.2, "huber": 0.0, "asd": 0.0},
        holdout_protocol=None,
        holdout_metrics=None,
        ranges={},
        bootstrap=[{"E": 0.1}] * 3,
        is_default=False,
        created_at=datetime.now(UTC),
    )
    body = fit_out(fit)
    assert body["objective"] is None and body["metrics"]["r2"] is None
    assert body["bootstrap"] == 3
