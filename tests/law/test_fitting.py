"""Fitting: recovery of known constants' predictions, status kept, data checks."""

from __future__ import annotations

import numpy as np
import pytest

from app.law.errors import NotEnoughData
from app.law.fitting import fit
from app.law.forms import get_form
from app.law.metrics import split
from app.law.types import Dataset, FitResult


def test_fit_predicts_held_out_larger_d_within_one_percent(
    synthetic: Dataset, truth: np.ndarray, fitted_d: FitResult
) -> None:
    _, test = split(synthetic, "D")
    predicted = get_form("p2").predict(fitted_d.params, synthetic.x.take(test))
    relative = np.abs(predicted / truth[test] - 1)
    assert relative.max() < 0.01
    assert fitted_d.holdout_metrics is not None
    assert fitted_d.holdout_metrics.mape < 1.0


def test_fit_keeps_optimiser_status_and_counts(synthetic: Dataset, fitted_d: FitResult) -> None:
    train, _ = split(synthetic, "D")
    assert fitted_d.converged
    assert fitted_d.message
    assert fitted_d.n_starts >= 1000
    assert fitted_d.n_observations == int(train.sum())
    assert fitted_d.n_runs == 9
    assert set(fitted_d.params) == set(get_form("p2").param_names)
    assert fitted_d.metrics.huber == pytest.approx(fitted_d.objective, rel=1e-9)
    assert fitted_d.ranges.tokens[1] < synthetic.x.tokens.max()


def test_fit_reaches_an_objective_at_least_as_good_as_the_truth(
    synthetic: Dataset, fitted: FitResult
) -> None:
    from app.law.metrics import evaluate
    from app.law.synthetic import SYNTHETIC_P2

    assert fitted.objective <= evaluate("p2", SYNTHETIC_P2["depth"], synthetic).huber * (1 + 1e-9)
    assert fitted.metrics.r2 > 0.9


def test_warm_start_from_the_fit_reproduces_it(synthetic: Dataset, fitted: FitResult) -> None:
    again = fit("p2", synthetic, warm_start=fitted.params)
    assert again.objective <= fitted.objective * (1 + 1e-7)
    assert again.n_starts == fitted.n_starts + 1


@pytest.mark.parametrize("form", ["frantar", "compression", "curve"])
def test_other_forms_fit_the_same_data(synthetic: Dataset, form: str) -> None:
    small = synthetic.take(synthetic.run < 3)
    result = fit(form, small, holdout="D")
    assert result.form == form
    assert result.holdout_metrics is not None
    assert np.isfinite(result.objective)
    assert result.holdout_metrics.mape < 5.0


def test_fewer_observations_than_parameters_is_not_enough_data(synthetic: Dataset) -> None:
    with pytest.raises(NotEnoughData, match="7 parameters"):
        fit("p2", synthetic.take(np.arange(5)))


def test_empty_split_is_not_enough_data(synthetic: Dataset) -> None:
    one_size = synthetic.take(synthetic.x.n0 == synthetic.x.n0.min())
    with pytest.raises(NotEnoughData, match="N0"):
        fit("p2", one_size, holdout="N0")


def test_fit_result_serialises_to_json(fitted: FitResult) -> None:
    import dataclasses
    import json

    text = json.dumps(dataclasses.asdict(fitted), allow_nan=False)
    assert '"form": "p2"' in text


def test_curve_form_cannot_hold_out_whole_runs(synthetic: Dataset) -> None:
    from app.law.errors import LawError

    with pytest.raises(LawError, match="one power law per run"):
        fit("curve", synthetic, holdout="N0")


@pytest.mark.parametrize("protocol", ["N0", "rho"])
def test_n0_and_rho_protocols_predict_the_held_out_runs(
    synthetic: Dataset, truth: np.ndarray, protocol: str
) -> None:
    result = fit("p2", synthetic, holdout=protocol)  # type: ignore[arg-type]
    _, test = split(synthetic, protocol)  # type: ignore[arg-type]
    predicted = get_form("p2").predict(result.params, synthetic.x.take(test))
    assert result.holdout_metrics is not None
    assert np.max(np.abs(predicted / truth[test] - 1)) < 0.03
