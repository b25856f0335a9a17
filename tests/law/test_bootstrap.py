"""Bootstrap by run: intervals are ordered and mostly contain the truth."""

from __future__ import annotations

import numpy as np
import pytest

from app.law.bootstrap import (
    percentile_interval,
    predict_interval,
    refit_predictions,
    refit_runs,
)
from app.law.errors import LawError
from app.law.forms import get_form
from app.law.types import Dataset, FitResult


@pytest.fixture(scope="module")
def refits(synthetic: Dataset, fitted: FitResult) -> list[dict[str, float]]:
    return refit_runs("p2", synthetic, fitted, 30, seed=1)


def test_refits_are_complete_and_varied(refits: list[dict[str, float]]) -> None:
    assert len(refits) == 30
    assert all(set(r) == set(get_form("p2").param_names) for r in refits)
    assert len({round(r["beta"], 9) for r in refits}) > 10


def test_intervals_are_ordered_and_mostly_contain_the_truth(
    synthetic: Dataset, truth: np.ndarray, fitted: FitResult, refits: list[dict[str, float]]
) -> None:
    lower, upper = predict_interval("p2", refits, synthetic.x, 0.9)
    assert np.all(lower <= upper)
    point = get_form("p2").predict(fitted.params, synthetic.x)
    # Percentile intervals need not contain the point estimate, but sit around it.
    assert np.mean((lower <= point) & (point <= upper)) > 0.8
    covered = np.mean((lower * 0.995 <= truth) & (truth <= upper * 1.005))
    assert covered > 0.8


def test_refits_are_reproducible_with_a_seed(synthetic: Dataset, fitted: FitResult) -> None:
    a = refit_runs("p2", synthetic, fitted, 2, seed=5)
    b = refit_runs("p2", synthetic, fitted, 2, seed=5)
    assert a == b


def test_curve_form_resamples_checkpoints_within_runs(synthetic: Dataset) -> None:
    from app.law.fitting import fit

    small = synthetic.take(synthetic.run < 2)
    result = fit("curve", small)
    refits = refit_runs("curve", small, result, 5, seed=0)
    assert all(set(r) == set(result.params) for r in refits)


def test_interval_level_must_be_a_fraction(
    refits: list[dict[str, float]], synthetic: Dataset
) -> None:
    with pytest.raises(LawError, match="between 0 and 1"):
        predict_interval("p2", refits, synthetic.x, 80)


def test_an_interval_from_a_kept_refit_matrix_is_the_percentile_of_each_refit(
    refits: list[dict[str, float]], synthetic: Dataset
) -> None:
    law = get_form("p2")
    each = np.stack([law.predict(r, synthetic.x) for r in refits])
    expected = np.percentile(each, [10, 90], axis=0)
    thetas = law.params_matrix(refits)
    np.testing.assert_allclose(
        refit_predictions("p2", refits, synthetic.x, thetas=thetas), each, rtol=1e-12
    )
    for got in (
        predict_interval("p2", refits, synthetic.x, 0.8),
        predict_interval("p2", refits, synthetic.x, 0.8, thetas=thetas),
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(LawError, match="no bootstrap refits"):
        refit_predictions("p2", [], synthetic.x)


@pytest.mark.parametrize("refits", [1, 2, 7, 100, 101])
@pytest.mark.parametrize("level", [0.01, 1 / 3, 0.8, 0.95, 0.999])
def test_percentile_interval_equals_numpy_percentile(refits: int, level: float) -> None:
    rng = np.random.default_rng(refits)
    for samples in (
        rng.normal(size=(refits, 9)),
        np.round(rng.normal(size=(refits, 9)), 1),  # ties
    ):
        samples[0, 3] = np.nan  # a column with a NaN has a NaN percentile, as in numpy
        samples[-1, 5] = np.inf
        lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
        with np.errstate(invalid="ignore"):
            expected = np.percentile(samples, [lo, hi], axis=0)
            got = np.array(percentile_interval(samples, level))
        np.testing.assert_array_equal(got, expected)
