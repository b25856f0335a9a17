"""Token answers anchored on a run's own early checkpoints (app.law.anchored), on synthetic
curves whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from app.law.anchored import (
    RunCurve,
    anchored_loss,
    error_interval,
    recommend_anchored,
    run_curve,
    shape,
    solve,
)
from app.law.errors import LawError, UnreachableTarget
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.law.recommend import recommend
from app.law.types import Features

#: A P² law (billions inside) with a pure power-law gap: L = L0 + K · D_C · D^(−β).
LAW = {"N_C": 0.0, "alpha": 0.3, "D_C": 0.4, "E": 0.0, "beta": 0.35, "gamma": -0.5, "delta": 0.1}
N0, L0 = 1.0e9, 2.5
TOKENS = np.geomspace(1e7, 3e9, 12)


def law_loss(rho: float, tokens: np.ndarray, level: float = 1.0) -> np.ndarray:
    """The law's loss for a run at ρ, its gap scaled by `level` (the run's own level)."""
    x = Features(
        np.full(tokens.size, N0), np.full(tokens.size, rho), np.full(tokens.size, L0), tokens
    )
    return L0 + level * (get_form("p2").predict(LAW, x) - L0)


def curve(
    run_id: str,
    rho: float,
    level: float,
    *,
    tokens: np.ndarray = TOKENS,
    noise: float = 0.0,
    seed: int = 0,
) -> RunCurve:
    loss = law_loss(rho, tokens, level)
    loss = loss * (1 + noise * np.random.default_rng(seed).normal(size=tokens.size))
    return RunCurve(run_id, N0, rho, L0, tokens, loss)


REFERENCES = [
    curve(f"ref-{rho}-{level}", rho, level, seed=i)
    for i, (rho, level) in enumerate([(0.15, 0.8), (0.25, 1.2), (0.35, 0.9), (0.3, 1.1)])
]


def test_the_anchored_answer_finds_a_run_the_law_misjudges() -> None:
    # The run recovers like the others (same exponent) from twice the gap the law predicts:
    # the law alone answers too few tokens; its first 4 checkpoints put the answer on the truth.
    run = curve("new", 0.25, 2.0)
    target = float(run.loss[-1])
    truth = float(run.tokens[-1])
    law = FittedLaw(get_form("p2"), LAW)
    plain = recommend(law, n0=N0, rho=0.25, l0=L0, rule="target", target_loss=target).tokens
    head = run.cut(float(TOKENS[3]))
    anchored = recommend_anchored(head, REFERENCES, rule="target", value=target, law=law)
    assert max(plain / truth, truth / plain) > 3.0
    assert anchored.tokens == pytest.approx(truth, rel=0.01)
    assert anchored.shape.exponent == pytest.approx(LAW["beta"], rel=1e-6)
    assert anchored.shape.source == "runs of the same n0"
    assert anchored.predicted_loss == pytest.approx(target, rel=1e-9)


def test_the_reference_runs_give_an_interval_that_holds_a_noisy_truth() -> None:
    refs = [
        curve(f"ref-{i}", rho, 1.0, noise=0.002, seed=i)
        for i, rho in enumerate((0.15, 0.2, 0.25, 0.3, 0.35))
    ]
    run = curve("new", 0.25, 1.5, noise=0.002, seed=9)
    head = run.cut(float(TOKENS[5]))
    answer = recommend_anchored(head, refs, rule="target", value=float(run.loss[-1]), level=0.8)
    assert answer.tokens_interval is not None
    low, high = answer.tokens_interval
    assert low < answer.tokens < high
    assert max(answer.tokens / TOKENS[-1], TOKENS[-1] / answer.tokens) < 1.5


def test_marginal_and_gap_follow_the_anchored_curve() -> None:
    run = curve("new", 0.25, 2.0).cut(float(TOKENS[4]))
    gap = recommend_anchored(run, REFERENCES, rule="gap", value=0.05, level=0.8)
    # L − L0 at the answer is the threshold: the curve's floor is L0.
    assert gap.predicted_loss - L0 == pytest.approx(0.05, rel=1e-9)
    assert gap.tokens_interval is None and gap.notes
    marginal = recommend_anchored(run, REFERENCES, rule="marginal", value=0.01)
    t, b = marginal.tokens, marginal.shape.exponent
    slope = b * (marginal.predicted_loss - L0) / (t / 1e9)
    assert slope == pytest.approx(0.01, rel=1e-6)


def test_without_runs_beyond_it_the_shape_is_the_laws() -> None:
    run = curve("new", 0.25, 2.0)
    law = FittedLaw(get_form("p2"), LAW)
    found = shape(run, [r.cut(float(TOKENS[-1]) / 2) for r in REFERENCES], law)
    assert found.source == "the fitted law"
    assert found.exponent == pytest.approx(LAW["beta"], rel=1e-6)
    with pytest.raises(LawError, match="no reference run"):
        shape(run, [], None)


def test_bad_runs_are_refused_clearly() -> None:
    with pytest.raises(LawError, match="at least 2"):
        run_curve([1e7], [3.0], n0=N0, rho=0.25, l0=L0, run_id="one")
    with pytest.raises(LawError, match="same tokens"):
        run_curve([1e7, 1e7], [3.0, 2.9], n0=N0, rho=0.25, l0=L0, run_id="twice")
    rising = run_curve([1e7, 2e7, 4e7], [2.40, 2.41, 2.42], n0=N0, rho=0.25, l0=L0, run_id="up")
    with pytest.raises(LawError, match="not falling"):
        recommend_anchored(rising, REFERENCES, rule="target", value=2.3)
    with pytest.raises(UnreachableTarget):
        solve("target", L0, l0=L0, log_a=0.0, exponent=0.5)


def descending(run_id: str, k: float, start: float, tokens: np.ndarray = TOKENS) -> RunCurve:
    """A run of a dense model not converged on its data: L = start − k · log(D / D_first),
    through L0 and on below it."""
    return RunCurve(run_id, N0, 0.25, L0, tokens, start - k * np.log(tokens / tokens[0]))


def test_where_l0_is_not_the_floor_the_run_continues_its_own_descent() -> None:
    # Its loss is still above L0 at its last early checkpoint, the target lies below L0: the
    # L0-anchored course never reaches it; the run's own descent does, on the truth.
    run = descending("new", 0.02, L0 + 0.08)
    head = run.cut(float(TOKENS[5]))
    target, truth = float(run.loss[-1]), float(TOKENS[-1])
    assert head.loss[-1] > L0 > target
    answer = recommend_anchored(head, REFERENCES, rule="target", value=target, level=0.8)
    assert answer.tokens == pytest.approx(truth, rel=1e-6)
    assert answer.predicted_loss == pytest.approx(target, rel=1e-9)
    assert answer.shape.descent == pytest.approx(0.02, rel=1e-6)
    assert answer.shape.exponent == 0.0 and "not this run's floor" in answer.notes[0]
    # Already below L0 at its last checkpoint: every rule follows the descent.
    below = run.cut(float(TOKENS[8]))
    assert below.loss[-1] < L0
    gap = recommend_anchored(below, REFERENCES, rule="gap", value=0.01)
    assert gap.predicted_loss == pytest.approx(L0 + 0.01, rel=1e-9) and gap.tokens < TOKENS[8]
    marginal = recommend_anchored(below, REFERENCES, rule="marginal", value=0.01)
    assert 0.02 * 1e9 / marginal.tokens == pytest.approx(0.01, rel=1e-9)
    grid = np.geomspace(TOKENS[8], TOKENS[-1], 5)
    assert np.allclose(
        anchored_loss(head, REFERENCES, grid, rule="target", value=target),
        L0 + 0.08 - 0.02 * np.log(grid / TOKENS[0]),
    )
    # A target above L0 on a run still above it keeps L0 as the floor.
    above = recommend_anchored(head, REFERENCES, rule="target", value=L0 + 0.01)
    assert above.shape.descent is None and above.shape.exponent > 0


def test_the_interval_takes_one_error_per_run_at_conformal_ranks() -> None:
    cut = 1e7
    # Per run, two checkpoints: the one nearest the answer's distance (log 10) counts; the
    # other (a wild error near the cut) is not another draw.
    errors = [
        (np.array([0.1, np.log(10.0)]), np.array([50.0, e * np.log(10.0)]))
        for e in np.linspace(-0.4, 0.4, 9)
    ]
    low, high = error_interval(1e8, cut, errors, 0.8)
    # n = 9 at 80%: ranks ⌊10 · 0.1⌋ = 1 and ⌈10 · 0.9⌉ = 9, the extremes.
    assert low == pytest.approx(1e8 * np.exp(-0.4 * np.log(10.0)))
    assert high == pytest.approx(1e8 * np.exp(0.4 * np.log(10.0)))
    more = [(np.array([np.log(10.0)]), np.array([e * np.log(10.0)])) for e in range(19)]
    low, high = error_interval(1e8, cut, more, 0.8)
    # n = 19: ranks 2 and 18 (errors 1 and 17; the highest error gives the lowest tokens).
    assert low == pytest.approx(1e8 * 10.0**-17) and high == pytest.approx(1e8 * 10.0**-1)


def test_hidden_runs_are_covered_near_the_level() -> None:
    # Twelve runs of one method with levels and noise of their own: each hidden in turn (its
    # first 5 checkpoints, the others as references), asked for its last loss.
    rng = np.random.default_rng(3)
    runs = [
        curve(f"r{i}", rho, float(level), noise=0.003, seed=i)
        for i, (rho, level) in enumerate(
            zip(np.tile([0.15, 0.25, 0.35], 4), rng.uniform(0.6, 1.6, 12), strict=True)
        )
    ]
    covered, factors = [], []
    for run in runs:
        others = [r for r in runs if r.run_id != run.run_id]
        head = run.cut(float(TOKENS[4]))
        answer = recommend_anchored(
            head, others, rule="target", value=float(run.loss[-1]), level=0.8
        )
        assert answer.tokens_interval is not None
        low, high = answer.tokens_interval
        covered.append(low <= TOKENS[-1] <= high)
        factors.append(max(answer.tokens / TOKENS[-1], TOKENS[-1] / answer.tokens))
    assert 0.7 <= np.mean(covered) <= 1.0
    assert np.median(factors) < 1.5


def test_the_law_path_states_how_far_beyond_the_data_it_answers() -> None:
    from app.law.ranges import beyond_observed
    from app.law.types import Ranges

    ranges = Ranges(
        n0=(N0, N0),
        rho=(0.15, 0.35),
        l0=(L0, L0),
        tokens=(1e7, 1e8),
        families=(),
        methods=(),
        protocols=(),
    )
    law = FittedLaw(get_form("p2"), LAW, ranges=ranges)
    answer = recommend(law, n0=N0, rho=0.25, l0=L0, rule="gap", threshold=0.01)
    assert answer.beyond_observed == pytest.approx(beyond_observed(ranges, answer.tokens))
    assert answer.beyond_observed == pytest.approx(answer.tokens / 1e8)
    assert (
        recommend(
            FittedLaw(get_form("p2"), LAW), n0=N0, rho=0.25, l0=L0, rule="gap", threshold=0.01
        ).beyond_observed
        is None
    )
