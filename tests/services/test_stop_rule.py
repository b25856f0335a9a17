"""Law-guided early stop: the marginal gain of a fitted curve against the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from app.services.stop_rule import RunPoint, StopRule, evaluate, marginal_gain


def curve_run(
    run_id: str, tokens: list[float], e: float = 2.0, b: float = 0.05, beta: float = 0.5
) -> list[RunPoint]:
    """A run on L = E + B (D/1e9)^(-beta) exactly."""
    return [RunPoint(run_id, 1e6, 0.25, 1.9, t, e + b * (t / 1e9) ** (-beta)) for t in tokens]


TOKENS = [float(t) for t in np.geomspace(1e4, 1e6, 8)]


def test_too_few_checkpoints_never_stop() -> None:
    decision = evaluate(StopRule("marginal", 1e9, 4), curve_run("r", TOKENS[:3]))
    assert not decision.stop and "3 of 4" in decision.reason


def test_marginal_gain_matches_the_analytic_derivative() -> None:
    run = curve_run("r", TOKENS)
    params = {"E@r": 2.0, "B@r": 0.05, "beta@r": 0.5, "n0@r": 1e6, "rho@r": 0.25, "l0@r": 1.9}
    d = run[-1].tokens / 1e9
    expected = 0.5 * 0.05 * d ** (-1.5)
    assert marginal_gain("curve", params, run[-1]) == pytest.approx(expected, rel=1e-3)


def test_a_lone_run_is_fitted_with_curve_and_stops_below_the_threshold() -> None:
    run = curve_run("r", TOKENS)
    gain = 0.5 * 0.05 * (TOKENS[-1] / 1e9) ** (-1.5)
    stop = evaluate(StopRule("marginal", gain * 2, 4), run)
    go_on = evaluate(StopRule("marginal", gain / 2, 4), run)
    assert stop.stop and stop.form == "curve"
    assert stop.marginal_per_billion == pytest.approx(gain, rel=0.05)
    assert "below the threshold" in stop.reason
    assert not go_on.stop and "above the threshold" in go_on.reason


def test_earlier_runs_of_the_family_bring_in_the_p2_law() -> None:
    earlier = [p for i in range(3) for p in curve_run(f"old{i}", TOKENS, e=2.0 + 0.1 * i)]
    decision = evaluate(StopRule("marginal", 1e-9, 4), curve_run("new", TOKENS[:5]), earlier)
    assert decision.form == "p2" and "29 points" in decision.reason
    assert decision.marginal_per_billion is not None and decision.marginal_per_billion > 0
    assert not decision.stop


def test_unknown_rule_is_not_applied() -> None:
    decision = evaluate(StopRule("gap", 1.0, 4), curve_run("r", TOKENS))
    assert not decision.stop and "unknown" in decision.reason
