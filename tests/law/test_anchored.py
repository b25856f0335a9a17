"""Token answers anchored on a run's own early checkpoints (app.law.anchored), on synthetic
curves whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from app.law.anchored import RunCurve, recommend_anchored, run_curve, shape
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
    below = run_curve([1e7, 2e7], [2.6, 2.4], n0=N0, rho=0.25, l0=L0, run_id="below")
    with pytest.raises(LawError, match="not above L0"):
        recommend_anchored(below, REFERENCES, rule="target", value=2.55)
    run = curve("new", 0.25, 1.0).cut(float(TOKENS[3]))
    with pytest.raises(UnreachableTarget):
        recommend_anchored(run, REFERENCES, rule="target", value=L0)


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
