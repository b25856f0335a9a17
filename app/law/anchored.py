"""Token answers for a run that has started: the law's question asked of the run's own level.

A fitted law predicts a *new* run from its (N0, ρ, L0) alone, and a run's loss departs from
that prediction by its own level; over a nearly flat curve a small departure in loss is a large
one in tokens (docs/law.md §7). When the run's first checkpoints are known, its course from the
last of them on is taken as

    L(D) = L0 + A · D^(−b)

- ``b``, the shape: how fast the gap above L0 of the other runs of its method fell *beyond the
  tokens this run has reached* (the slope of log(L − L0) on log D over their checkpoints from
  there on, the median over runs), taken from the runs of the same N0 when there are any
  (sizes recover at different rates) and from all of them otherwise; without such runs, the
  fitted law's own slope over one decade from there;
- ``A``, the level: the run's own gap at its last checkpoint(s) (`ANCHOR_POINTS`).

Every rule then has a closed form. Its interval comes from the same question asked of every
reference run (cut where this run stops, shaped by the others, its later checkpoints as truth):
the errors in log tokens per unit of log distance beyond the cut, scaled to this answer's
distance. The assumption: this run's gap keeps falling as the other runs' gaps fell over the
same tokens, and a gap above L0 is what remains to recover (a run whose loss falls below L0, a
dense model not converged, breaks it: docs/law.md §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.law.errors import LawError, UnreachableTarget
from app.law.law import FittedLaw
from app.law.types import Dataset, Features, FloatArray, Rule

#: The run's level is its mean log gap over this many last checkpoints (1: the last one, which
#: lies nearest the answer; on the study's runs more points cost sharpness, docs/study.md).
ANCHOR_POINTS = 1
#: The fewest checkpoints of the run itself an anchored answer takes.
MIN_RUN_POINTS = 2
#: A reference run gives a shape from at least this many of its checkpoints beyond the cut.
MIN_SHAPE_POINTS = 2
#: The errors of the reference runs' own answers, at least this many, make an interval.
MIN_POOL = 4
# Relative tolerance when matching N0 between runs (the same size).
_SAME_RTOL = 1e-6


@dataclass(frozen=True)
class RunCurve:
    """One run's checkpoints, sorted by tokens (raw counts)."""

    run_id: str
    n0: float
    rho: float
    l0: float
    tokens: FloatArray
    loss: FloatArray

    def gap(self) -> FloatArray:
        """log(L − L0) at each checkpoint (nan where the loss is not above L0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.log(np.where(self.loss > self.l0, self.loss - self.l0, np.nan)))

    def cut(self, tokens: float) -> RunCurve:
        """The run's checkpoints at or below `tokens`."""
        keep = self.tokens <= tokens * (1 + 1e-9)
        return RunCurve(self.run_id, self.n0, self.rho, self.l0, self.tokens[keep], self.loss[keep])


def runs_of(data: Dataset) -> list[RunCurve]:
    """The runs of a dataset as curves sorted by tokens."""
    out = []
    for r in np.unique(data.run):
        idx = np.flatnonzero(data.run == r)
        idx = idx[np.argsort(data.x.tokens[idx], kind="stable")]
        out.append(
            RunCurve(
                run_id=data.run_ids[int(r)],
                n0=float(data.x.n0[idx[0]]),
                rho=float(data.x.rho[idx[0]]),
                l0=float(data.x.l0[idx[0]]),
                tokens=np.asarray(data.x.tokens[idx], dtype=np.float64),
                loss=np.asarray(data.loss[idx], dtype=np.float64),
            )
        )
    return out


def run_curve(
    tokens: Sequence[float],
    loss: Sequence[float],
    *,
    n0: float,
    rho: float,
    l0: float,
    run_id: str,
) -> RunCurve:
    """A run given as points; LawError for too few, repeated or non-finite ones."""
    t = np.asarray(tokens, dtype=np.float64)
    v = np.asarray(loss, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise LawError("the run's tokens and losses must be two lists of the same length")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v)) and np.all(t > 0)):
        raise LawError("the run's tokens must be positive and its losses finite")
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if np.unique(t).size != t.size:
        raise LawError("the run has two checkpoints at the same tokens")
    if t.size < MIN_RUN_POINTS:
        raise LawError(
            f"an answer anchored on a run needs at least {MIN_RUN_POINTS} of its checkpoints, "
            f"got {t.size}"
        )
    return RunCurve(run_id, float(n0), float(rho), float(l0), t, v)


def _slope(run: RunCurve, start: float) -> float | None:
    """The slope of log(L − L0) on log D over the run's checkpoints at or beyond `start`."""
    keep = run.tokens >= start * (1 - 1e-9)
    y = run.gap()[keep]
    x = np.log(run.tokens[keep])
    ok = np.isfinite(y)
    if int(ok.sum()) < MIN_SHAPE_POINTS:
        return None
    return float(np.polyfit(x[ok], y[ok], 1)[0])


@dataclass(frozen=True)
class Shape:
    """The exponent b of the run's gap beyond its last checkpoint, and where it came from."""

    exponent: float
    source: str
    run_ids: tuple[str, ...]


def shape(run: RunCurve, references: Sequence[RunCurve], law: FittedLaw | None = None) -> Shape:
    """The median slope of the references' log gap beyond the run's last tokens (the same N0
    when any has one), or the law's own slope over one decade beyond them; LawError when
    neither falls."""
    start = float(run.tokens[-1])
    others = [r for r in references if r.run_id != run.run_id]
    same = [r for r in others if abs(r.n0 - run.n0) <= _SAME_RTOL * abs(run.n0)]
    for group, source in ((same, "runs of the same n0"), (others, "runs of the method")):
        slopes = [(r.run_id, s) for r in group if (s := _slope(r, start)) is not None]
        if slopes:
            b = -float(np.median([s for _, s in slopes]))
            if b > 0:
                return Shape(b, source, tuple(i for i, _ in slopes))
    if law is not None:
        ends = np.array([start, 10.0 * start])
        x = Features(np.full(2, run.n0), np.full(2, run.rho), np.full(2, run.l0), ends)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            gap = law.form.predict(law.params, x) - run.l0
            b = -float(np.diff(np.log(gap))[0] / np.log(10.0)) if np.all(gap > 0) else np.nan
        if np.isfinite(b) and b > 0:
            return Shape(b, "the fitted law", ())
    raise LawError(
        "no reference run continues beyond this run's last checkpoint with a falling gap above "
        "L0, and the law gives none: the run's own points cannot be extended"
    )


def log_level(run: RunCurve, exponent: float) -> float:
    """log A of L = L0 + A · D^(−b): the run's mean log gap at its last ANCHOR_POINTS
    checkpoints moved along the shape; LawError when the loss there is not above L0."""
    gap = run.gap()[-ANCHOR_POINTS:]
    if not np.all(np.isfinite(gap)):
        raise LawError(
            "the run's last checkpoint is not above L0: its gap cannot be anchored (the dense "
            "model may not be converged, docs/law.md §3)"
        )
    return float(np.mean(gap + exponent * np.log(run.tokens[-ANCHOR_POINTS:])))


def solve(rule: Rule, value: float, *, l0: float, log_a: float, exponent: float) -> float:
    """Tokens at which L = L0 + A · D^(−b) meets the rule (raw tokens; the gap is measured
    above L0, the curve's floor). UnreachableTarget for a target at or below L0."""
    b = exponent
    if rule == "target":
        if value <= l0:
            raise UnreachableTarget(value, l0)
        return float(np.exp((log_a - np.log(value - l0)) / b))
    if rule == "gap":
        return float(np.exp((log_a - np.log(value)) / b))
    # marginal: −dL/dD per billion tokens = b · A · D^(−b−1) · 1e9 ≤ τ.
    return float(np.exp((np.log(b) + log_a + np.log(1e9) - np.log(value)) / (b + 1.0)))


def loss_at(tokens: FloatArray, *, l0: float, log_a: float, exponent: float) -> FloatArray:
    """The anchored curve's loss at `tokens`."""
    return np.asarray(l0 + np.exp(log_a - exponent * np.log(tokens)), dtype=np.float64)


def error_pool(
    run: RunCurve, references: Sequence[RunCurve], law: FittedLaw | None = None
) -> FloatArray:
    """log(answer / truth) ÷ log(truth / cut) for every later checkpoint of every reference run
    cut where `run` stops and answered by this module from the other references (the run
    itself left out): the errors of the target rule per unit of log distance."""
    cut_at = float(run.tokens[-1])
    others = [r for r in references if r.run_id != run.run_id]
    errors: list[float] = []
    for ref in others:
        head = ref.cut(cut_at)
        if head.tokens.size < MIN_RUN_POINTS:
            continue
        try:
            rest = shape(head, [r for r in others if r.run_id != ref.run_id], law)
            log_a = log_level(head, rest.exponent)
        except LawError:
            continue
        last = float(head.tokens[-1])
        for t, v in zip(ref.tokens, ref.loss, strict=True):
            if t <= last * (1 + 1e-9) or v <= ref.l0:
                continue
            answer = solve("target", float(v), l0=ref.l0, log_a=log_a, exponent=rest.exponent)
            errors.append(float(np.log(answer / t) / np.log(t / last)))
    return np.asarray(errors, dtype=np.float64)


@dataclass(frozen=True)
class AnchoredAnswer:
    """A rule's tokens on the run's anchored curve, and what it rests on."""

    tokens: float
    predicted_loss: float
    floor_loss: float
    capped: bool
    tokens_interval: tuple[float, float] | None
    shape: Shape
    anchor_tokens: float
    notes: tuple[str, ...] = ()


def recommend_anchored(
    run: RunCurve,
    references: Sequence[RunCurve],
    *,
    rule: Rule,
    value: float,
    law: FittedLaw | None = None,
    max_tokens: float | None = None,
    level: float | None = None,
) -> AnchoredAnswer:
    """The rule's answer on the run's own curve (module docstring), capped at `max_tokens`,
    with the reference runs' interval at `level` for the target rule."""
    found = shape(run, references, law)
    log_a = log_level(run, found.exponent)
    tokens = solve(rule, value, l0=run.l0, log_a=log_a, exponent=found.exponent)
    capped = max_tokens is not None and tokens > max_tokens
    if capped:
        assert max_tokens is not None
        tokens = float(max_tokens)
    notes: list[str] = []
    cut = float(run.tokens[-1])
    interval: tuple[float, float] | None = None
    if level is not None:
        if rule != "target":
            notes.append(
                "the interval of an answer anchored on a run is measured for the target rule "
                "only: none is given for this rule"
            )
        else:
            pool = error_pool(run, references, law)
            if pool.size < MIN_POOL:
                notes.append(
                    f"only {pool.size} checkpoint(s) of the reference runs lie beyond this "
                    f"run's last tokens (at least {MIN_POOL} make an interval): no interval"
                )
            else:
                lo_q, hi_q = np.quantile(pool, [(1 - level) / 2, (1 + level) / 2])
                distance = max(float(np.log(max(tokens, cut) / cut)), 0.0)
                # truth = answer · exp(−error · distance): the highest error gives the lowest
                # truth.
                interval = (
                    float(tokens * np.exp(-hi_q * distance)),
                    float(tokens * np.exp(-lo_q * distance)),
                )
    at = np.array([tokens])
    return AnchoredAnswer(
        tokens=float(tokens),
        predicted_loss=float(loss_at(at, l0=run.l0, log_a=log_a, exponent=found.exponent)[0]),
        floor_loss=run.l0,
        capped=bool(capped),
        tokens_interval=interval,
        shape=found,
        anchor_tokens=cut,
        notes=tuple(notes),
    )


def anchored_loss(
    run: RunCurve,
    references: Sequence[RunCurve],
    tokens: FloatArray,
    law: FittedLaw | None = None,
) -> FloatArray:
    """The run's anchored curve at `tokens` (for the response's curve)."""
    found = shape(run, references, law)
    log_a = log_level(run, found.exponent)
    at = np.asarray(tokens, dtype=np.float64)
    return loss_at(at, l0=run.l0, log_a=log_a, exponent=found.exponent)
