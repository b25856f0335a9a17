"""Law-guided early stop: the marginal gain of a fitted curve against the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from app.schemas.jobs import StopRuleIn
from app.services.stop_rule import RunPoint, decide, marginal_gain


def curve_run(
    run_id: str, tokens: list[float], e: float = 2.0, b: float = 0.05, beta: float = 0.5
) -> list[RunPoint]:
    """A run on L = E + B (D/1e9)^(-beta) exactly."""
    return [RunPoint(run_id, 1e6, 0.25, 1.9, t, e + b * (t / 1e9) ** (-beta)) for t in tokens]


TOKENS = [float(t) for t in np.geomspace(1e4, 1e6, 8)]


def rule(threshold: float, min_checkpoints: int = 4) -> StopRuleIn:
    return StopRuleIn(threshold=threshold, min_checkpoints=min_checkpoints)


def test_too_few_checkpoints_never_stop_nor_read_earlier_runs() -> None:
    def earlier() -> list[RunPoint]:
        raise AssertionError("earlier runs are read only once the rule acts")

    decision = decide(rule(1e9), curve_run("r", TOKENS[:3]), earlier)
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
    stop = decide(rule(gain * 2), run)
    go_on = decide(rule(gain / 2), run)
    assert stop.stop and stop.form == "curve"
    assert stop.marginal_per_billion == pytest.approx(gain, rel=0.05)
    assert "below the threshold" in stop.reason
    assert not go_on.stop and "above the threshold" in go_on.reason


def test_earlier_runs_of_the_family_bring_in_the_p2_law() -> None:
    earlier = [p for i in range(3) for p in curve_run(f"old{i}", TOKENS, e=2.0 + 0.1 * i)]
    decision = decide(rule(1e-9), curve_run("new", TOKENS[:5]), lambda: earlier)
    assert decision.form == "p2" and "29 points" in decision.reason
    assert decision.marginal_per_billion is not None and decision.marginal_per_billion > 0
    assert not decision.stop
