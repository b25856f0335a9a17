"""Law-guided early stop: end post-training when the law says more tokens barely help.

Rule ``marginal`` (docs/law.md §7): after ``min_checkpoints`` checkpoints, fit the law to this
run's points and stop once the predicted marginal gain −dL/dD, in nats per **billion** tokens at
the current D, is below ``threshold``. With earlier runs of the same family and method in the store
the cross-run P² law is fitted to them plus this run (it has seen where such curves flatten);
for a lone run the per-run power law ``curve`` (L = E + B·D^−β) is fitted instead, since P²'s
seven constants are not identifiable from one curve. The derivative is the law engine's
(``app.law.recommend.marginal_gain``), so any registered form works the same way.

:func:`decide` is the one entry point: the worker hands in the job's validated ``stop_rule``,
the run's points and a loader for the earlier runs, which is called only once the rule acts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.law.errors import LawError
from app.law.fitting import fit
from app.law.recommend import marginal_gain as law_marginal_gain
from app.law.types import Dataset, Features
from app.schemas.jobs import StopRuleIn


@dataclass(frozen=True)
class RunPoint:
    """One observed checkpoint (raw counts: n0 parameters, tokens)."""

    run_id: str
    n0: float
    rho: float
    l0: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class StopDecision:
    """Whether to stop, the marginal gain the law predicts now, and a sentence saying why."""

    stop: bool
    marginal_per_billion: float | None
    form: str | None
    reason: str


def marginal_gain(form: str, params: dict[str, float], point: RunPoint) -> float:
    """−dL/dD in nats per billion tokens predicted by ``form`` at ``point``'s D."""
    x = Features(
        np.array([point.n0]), np.array([point.rho]), np.array([point.l0]), np.array([point.tokens])
    )
    return float(law_marginal_gain(form, params, x)[0])


def decide(
    rule: StopRuleIn,
    run: Sequence[RunPoint],
    earlier: Callable[[], Sequence[RunPoint]] = tuple,
) -> StopDecision:
    """Apply ``rule`` to a run's points so far; ``earlier`` loads the other runs of its family
    and method (called only when the run has ``min_checkpoints`` points)."""
    if len(run) < rule.min_checkpoints:
        return StopDecision(
            False, None, None, f"{len(run)} of {rule.min_checkpoints} checkpoints before the rule"
        )
    current = max(run, key=lambda p: p.tokens)
    others = earlier()
    attempts: list[tuple[str, Sequence[RunPoint]]] = []
    if others:
        attempts.append(("p2", [*others, *run]))
    attempts.append(("curve", run))
    problems: list[str] = []
    for form, points in attempts:
        try:
            with np.errstate(all="ignore"):
                result = fit(form, Dataset.from_rows(points))
                gain = marginal_gain(form, result.params, current)
        except LawError as exc:
            problems.append(f"{form}: {exc}")
            continue
        if not np.isfinite(gain):
            problems.append(f"{form}: non-finite marginal gain")
            continue
        stop = gain < rule.threshold
        verdict = "below" if stop else "above"
        reason = (
            f"law-guided stop ({form} fit to {len(points)} points): predicted marginal gain "
            f"{gain:.4g} nats per billion tokens at {current.tokens:.0f} tokens is {verdict} "
            f"the threshold {rule.threshold:.4g}"
        )
        return StopDecision(stop, gain, form, reason)
    return StopDecision(False, None, None, "no law could be fitted: " + "; ".join(problems))
