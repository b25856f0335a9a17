"""Prediction intervals calibrated on held-out runs (app/law/intervals.py, docs/law.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from app.law import Dataset, LawError, fit, get_form, predict_interval, refit_runs
from app.law.calibration import MIN_DRAWS_PER_BIN, MIN_RUNS_PER_BIN, Bin, Calibration, make_bins
from app.law.intervals import (
    calibrate,
    continuation_note,
    fold_spread,
    forecast,
    interval,
    measure_coverage,
    runs_only,
)
from app.law.law import FittedLaw
from app.law.synthetic import SYNTHETIC_P2
from app.law.types import Features

LAW = SYNTHETIC_P2["depth"]
SIZES = ((0.5e9, 3.0), (1.0e9, 2.75), (3.0e9, 2.45), (8.0e9, 2.2))
RHOS = (0.15, 0.25, 0.35)
TOKENS = np.geomspace(1e7, 3e9, 8)


def make_runs(
    rng: np.random.Generator,
    configs: list[tuple[float, float, float]],
    prefix: str,
    *,
    run_sd: float = 0.01,
    noise: float = 0.003,
) -> list[dict[str, Any]]:
    """Runs of the synthetic P² law, each with its own log offset (a run's level) and
    per-checkpoint noise: the exchangeable runs the intervals assume."""
    p2 = get_form("p2")
    rows: list[dict[str, Any]] = []
    for k, (n0, l0, rho) in enumerate(configs):
        n = TOKENS.size
        x = Features(np.full(n, n0), np.full(n, rho), np.full(n, l0), TOKENS.copy())
        loss = p2.predict(LAW, x) * np.exp(
            run_sd * rng.standard_normal() + noise * rng.standard_normal(n)
        )
        rows += [
            {"run_id": f"{prefix}{k}", "n0": n0, "rho": rho, "l0": l0, "tokens": t, "loss": v}
            for t, v in zip(TOKENS, loss, strict=True)
        ]
    return rows


def _law(
    params: Mapping[str, float],
    refits: Sequence[Mapping[str, float]] = (),
    calibration: Calibration | None = None,
) -> FittedLaw:
    """A fitted p2 law of `params`, with its refits and calibration."""
    return FittedLaw(get_form("p2"), params, tuple(refits), calibration)


def fitted(rows: list[dict[str, Any]], refits: int = 20) -> tuple[Any, list[Any], Calibration]:
    data = Dataset.from_rows(rows)
    result = fit("p2", data)
    return result, refit_runs("p2", data, result, refits), calibrate("p2", data, result)


def test_weighted_quantiles_count_each_run_once() -> None:
    # One run of 9 points at 0 and one run of 1 point at 1: with a weight per run the 80%
    # quantile is the second run's value; counting points it would be the first run's.
    residuals = np.array([0.0] * 9 + [1.0])
    (by_run,) = make_bins(residuals, np.array([1 / 9] * 9 + [1.0]), np.zeros(10))
    (by_point,) = make_bins(residuals, np.full(10, 0.1), np.zeros(10))
    assert by_run.quantiles([0.8])[0] == pytest.approx(1.0)
    assert by_point.quantiles([0.8])[0] == pytest.approx(0.0)


def test_bins_hold_at_least_the_minimum_weight_of_runs() -> None:
    rng = np.random.default_rng(0)
    n = 40
    bins = make_bins(rng.normal(size=n), np.full(n, 0.5), rng.uniform(0.1, 3.0, size=n))
    assert len(bins) > 1
    assert all(float(np.sum(b.weights)) >= MIN_RUNS_PER_BIN for b in bins)
    centers = [b.distance for b in bins]
    assert centers == sorted(centers)


def test_a_query_beyond_every_bin_scales_residuals_up_never_down() -> None:
    spread = Bin(distance=1.0, residuals=np.array([-0.1, 0.0, 0.1]), weights=np.ones(3))
    narrow = Bin(distance=0.0, residuals=np.array([-0.01, 0.0, 0.01]), weights=np.ones(3))
    cal = Calibration(
        pools={"N0": [spread], "runs": [narrow]},
        runs=(),
        n0_range=(1e9, 2e9),
        rho_range=(0.15, 0.35),
        tokens_range=(1e7, 1e10),
    )
    x = Features(
        np.array([2e9 * np.e, 2e9 * np.e**3, 2e9 * np.e**0.1]),
        np.full(3, 0.25),
        np.full(3, 2.5),
        np.full(3, 1e9),
    )
    band = interval(_law(LAW, [], cal), x, level=0.8)
    width = np.log(band.upper / band.lower)
    assert band.pools == ("N0", "N0", "N0")
    # Three times further than the bin: three times wider; closer: never narrower than it.
    assert width[1] == pytest.approx(3 * width[0], rel=1e-9)
    assert width[2] == pytest.approx(width[0], rel=1e-9)


def test_calibration_survives_its_json_form() -> None:
    result, refits, cal = fitted(make_runs(np.random.default_rng(1), _grid(SIZES[:3]), "r"))
    again = Calibration.from_dict(cal.as_dict())
    x = Dataset.from_rows(make_runs(np.random.default_rng(2), [(2e9, 2.6, 0.2)], "q")).x
    a = interval(_law(result.params, refits, cal), x, level=0.8)
    b = interval(_law(result.params, refits, again), x, level=0.8)
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.upper, b.upper)


def _grid(sizes: tuple[tuple[float, float], ...]) -> list[tuple[float, float, float]]:
    return [(n0, l0, rho) for n0, l0 in sizes for rho in RHOS]


def test_the_confidence_kind_is_the_bootstrap_percentile_band() -> None:
    result, refits, cal = fitted(make_runs(np.random.default_rng(3), _grid(SIZES[:3]), "r"))
    x = Dataset.from_rows(make_runs(np.random.default_rng(4), [(2e9, 2.6, 0.2)], "q")).x
    conf = interval(_law(result.params, refits, cal), x, level=0.8, kind="confidence")
    lower, upper = predict_interval("p2", refits, x, 0.8)
    np.testing.assert_allclose(conf.lower, lower)
    np.testing.assert_allclose(conf.upper, upper)
    # A new run departs from the mean curve by more than the curve's own uncertainty.
    pred = interval(_law(result.params, refits, cal), x, level=0.8)
    assert np.mean(np.log(pred.upper / pred.lower)) > np.mean(np.log(conf.upper / conf.lower))


def test_each_point_takes_the_pool_of_its_question() -> None:
    rows = make_runs(np.random.default_rng(5), _grid(SIZES[:3]), "r")
    result, refits, cal = fitted(rows)
    assert {"seen", "runs", "D", "N0", "rho"} <= set(cal.pools)
    first = rows[0]
    x = Features(
        np.array([first["n0"], first["n0"], 2e9, 8e9, 2e9]),
        np.array([first["rho"], first["rho"], 0.2, 0.2, 0.5]),
        np.array([first["l0"], first["l0"], 2.6, 2.2, 2.6]),
        np.array([TOKENS[3], 3e10, 1e8, 1e8, 1e8]),
    )
    band = interval(_law(result.params, refits, cal), x, level=0.8)
    # A fitted run inside and beyond its tokens, a new run inside the ranges, beyond N0, beyond ρ.
    assert band.pools[:3] == ("seen", "D", "runs")
    assert band.pools[3] in ("N0", "runs", "refits") and band.pools[4] in ("rho", "runs", "refits")
    width = np.log(band.upper / band.lower)
    assert width[3] >= width[2] - 1e-12 and width[4] >= width[2] - 1e-12


def test_a_prediction_interval_needs_a_calibration() -> None:
    x = Features(np.array([1e9]), np.array([0.25]), np.array([2.5]), np.array([1e9]))
    with pytest.raises(LawError, match="calibration"):
        interval(_law(LAW, [LAW], None), x, level=0.8)
    with pytest.raises(LawError, match="refits"):
        interval(_law(LAW, [], None), x, level=0.8, kind="confidence")


def test_80_percent_intervals_cover_70_to_90_percent_of_new_runs_of_a_known_law() -> None:
    """Many synthetic datasets from the true law with run-to-run spread: the share of new runs'
    points (inside the fitted ranges) and of continued runs' later points inside the 80%
    prediction interval. The confidence band alone covers far less."""
    inside_new: list[float] = []
    inside_continued: list[float] = []
    inside_confidence: list[float] = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        rows = make_runs(rng, _grid(SIZES[:3]), "r")
        cut = {"r0", "r4", "r8"}
        train = [r for r in rows if not (r["run_id"] in cut and r["tokens"] > 1.5e8)]
        later = Dataset.from_rows([r for r in rows if r["run_id"] in cut and r["tokens"] > 1.5e8])
        result, refits, cal = fitted(train)
        new = Dataset.from_rows(
            make_runs(rng, [(n0, l0, rho) for n0, l0 in SIZES[:3] for rho in (0.2, 0.3)], "n")
        )
        for data, sink in ((new, inside_new), (later, inside_continued)):
            band = interval(_law(result.params, refits, cal), data.x, level=0.8)
            sink += list((data.loss >= band.lower) & (data.loss <= band.upper))
        conf = interval(_law(result.params, refits, cal), new.x, level=0.8, kind="confidence")
        inside_confidence += list((new.loss >= conf.lower) & (new.loss <= conf.upper))
    assert 0.7 <= np.mean(inside_new) <= 0.9
    assert 0.7 <= np.mean(inside_continued) <= 0.9
    assert np.mean(inside_confidence) < 0.5


def test_coverage_is_measured_on_every_protocol_the_data_allow() -> None:
    rows = make_runs(np.random.default_rng(7), _grid(SIZES), "r")
    data = Dataset.from_rows(rows)
    coverage = measure_coverage("p2", data, level=0.8, bootstrap=10)
    assert [c.protocol for c in coverage] == ["D", "N0", "rho"]
    for c in coverage:
        assert 0.0 <= c.prediction <= 1.0 and c.points > 0 and c.runs > 0
        assert c.confidence is not None and c.prediction >= c.confidence
    one_size = Dataset.from_rows(make_runs(np.random.default_rng(8), _grid(SIZES[:1]), "r"))
    assert "N0" not in [c.protocol for c in measure_coverage("p2", one_size, bootstrap=0)]


def test_a_continued_run_keeps_its_own_gap_level() -> None:
    """A run whose gap above L0 is 30% larger than the law's: fitted on its first half with the
    other runs, its forecast beyond keeps the larger gap (the anchor) and lands far closer to
    its later checkpoints than the law alone."""
    rng = np.random.default_rng(11)
    rows = make_runs(rng, _grid(SIZES[:3]), "r", run_sd=0.0, noise=0.0005)
    p2 = get_form("p2")
    odd = [r for r in rows if r["run_id"] == "r4"]
    for r in odd:
        x = Features(*(np.array([r[k]]) for k in ("n0", "rho", "l0", "tokens")))
        r["loss"] = r["l0"] + 1.3 * (float(p2.predict(LAW, x)[0]) - r["l0"])
    early = [r for r in rows if not (r["run_id"] == "r4" and r["tokens"] > 1.5e8)]
    later = Dataset.from_rows([r for r in odd if r["tokens"] > 1.5e8])
    data = Dataset.from_rows(early)
    result = fit("p2", data)
    cal = runs_only("p2", data, result)
    (key,) = [k for k in cal.runs if k.run_id == "r4"]
    assert key.anchor == pytest.approx(np.log(1.3), abs=0.05)
    law_alone = p2.predict(result.params, later.x)
    kept = forecast(_law(result.params, calibration=cal), later.x)
    assert np.max(np.abs(kept / later.loss - 1)) < 0.25 * np.max(np.abs(law_alone / later.loss - 1))
    # A point of no fitted run is the law's own prediction.
    new = Features(np.array([2e9]), np.array([0.2]), np.array([2.6]), np.array([1e9]))
    alone = pytest.approx(p2.predict(result.params, new))
    assert forecast(_law(result.params, calibration=cal), new) == alone
    assert continuation_note(cal, later.x) and "r4" in continuation_note(cal, later.x)[0]
    assert continuation_note(cal, new) == []


def test_a_point_further_out_than_any_hold_out_reached_is_warned_about() -> None:
    result, refits, cal = fitted(make_runs(np.random.default_rng(12), _grid(SIZES[:3]), "r"))
    reach = max(b.distance for b in cal.pools["N0"])
    near = SIZES[2][0] * np.exp(0.5 * reach)
    far = SIZES[2][0] * np.exp(3.0 * reach)
    x = Features(np.array([near, far]), np.full(2, 0.2), np.full(2, 2.3), np.full(2, 1e9))
    band = interval(_law(result.params, refits, cal), x, level=0.8)
    assert [n for n in band.notes if "sizes (N0)" in n and n.startswith("1 point")]
    inside = interval(_law(result.params, refits, cal), x.take(np.array([0])), level=0.8)
    assert not [n for n in inside.notes if "sizes (N0)" in n]


def test_a_point_beyond_the_fitted_sizes_is_at_least_as_uncertain_as_the_refits_there() -> None:
    result, refits, cal = fitted(make_runs(np.random.default_rng(13), _grid(SIZES[:2]), "r"))
    assert len(cal.folds) >= 2
    assert Calibration.from_dict(cal.as_dict()).folds == cal.folds
    law = _law(result.params, refits, cal)
    top = SIZES[1][0]
    sizes = np.array([top * 1.5, top * 4.0, top * 16.0])
    x = Features(sizes, np.full(3, 0.25), np.full(3, 2.3), np.full(3, 1e9))
    spread = fold_spread(law, x)
    # The fitted dependence on N0 is less certain the further the answer reaches.
    assert 0 < spread[0] < spread[1] < spread[2]
    band = interval(law, x, level=0.8)
    center = np.log(forecast(law, x))
    half = 1.2815515655446004 * spread
    assert np.all(np.log(band.upper) - center >= half - 1e-12)
    assert np.all(center - np.log(band.lower) >= half - 1e-12)
    # Without the refits the band is the pools' alone, and narrower at the far end.
    bare = interval(_law(result.params, refits, replace(cal, folds=())), x, level=0.8)
    assert "refits" not in bare.pools
    assert np.log(bare.upper[2] / bare.lower[2]) < np.log(band.upper[2] / band.lower[2])


def test_a_conformal_bin_reads_one_draw_per_run_at_n_plus_one_ranks() -> None:
    # Three runs of many near-identical checkpoints and six of one each: nine draws, not 33
    # points. With 9 draws the 80% interval is their range: a new draw falls inside it with
    # probability (9 − 1)/(9 + 1) = 80%.
    residuals = np.concatenate([np.full(9, -0.03), np.full(9, 0.0), np.full(9, 0.03)])
    residuals = np.concatenate([residuals, np.linspace(-0.02, 0.02, 6)])
    draws = np.concatenate([np.repeat([0, 1, 2], 9), np.arange(3, 9)]).astype(np.int64)
    weights = np.concatenate([np.full(27, 1 / 9), np.ones(6)])
    (bin_,) = make_bins(residuals, weights, np.full(33, 0.5), draws)
    assert bin_.conformal and bin_.residuals.size == 9 and np.all(bin_.weights == 1.0)
    median, lo, hi = bin_.quantiles([0.5, 0.1, 0.9])
    assert (lo, hi) == (-0.03, 0.03) and median == pytest.approx(0.0)
    # 19 draws: ranks ⌊20 · 0.1⌋ = 2 and ⌈20 · 0.9⌉ = 18.
    many = Bin(0.5, np.arange(19.0), np.ones(19), conformal=True)
    assert list(many.quantiles([0.1, 0.9])) == [1.0, 17.0]
    assert Bin.from_dict(many.as_dict()).conformal


def test_continued_runs_are_calibrated_one_draw_per_cut_run() -> None:
    *_, cal = fitted(make_runs(np.random.default_rng(14), _grid(SIZES[:3]), "r"), refits=0)
    assert cal.pools["D"]
    for b in cal.pools["D"]:
        assert b.conformal and b.residuals.size >= MIN_DRAWS_PER_BIN
    again = Calibration.from_dict(cal.as_dict())
    assert all(b.conformal for b in again.pools["D"])
