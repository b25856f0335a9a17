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

Where L0 is not the run's floor (its loss has reached L0, or a target lies at or below it: a
dense model not converged on this data, docs/law.md §3) no gap above L0 is left to anchor, and
the course is the run's own descent instead: L(D) = L_e − k · log(D / D_e), k the slope of its
loss on log D over its last checkpoints (`DESCENT_POINTS`), the b → 0 limit of a power law whose
floor lies far below. It never flattens, so it is no answer for a run that has reached its floor.

Every rule then has a closed form. Its interval comes from the same question asked of every
reference run of the method (cut where this run stops, its course found in the same way from
the others, its later checkpoints as truths): from each run the error in log tokens, per unit
of log distance beyond the cut, of its checkpoint nearest this answer's distance; their
conformal quantiles over the runs, scaled to this answer's distance. The assumption: this run's
gap keeps falling as the other runs' gaps fell over the same tokens, and a gap above L0 is what
remains to recover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.law.calibration import conformal
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
#: The reference runs that can be asked the run's question, at least this many, make an interval.
MIN_POOL = 4
#: Where L0 is not the run's floor, its own descent is the slope of its loss on log D over this
#: many last checkpoints (fewer lag behind its noise, more behind its flattening; docs/study.md).
DESCENT_POINTS = 4
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
    #: Where L0 is not the run's floor: its own fall in nats per e-fold of tokens (exponent 0).
    descent: float | None = None


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


def descent(run: RunCurve) -> float:
    """The run's own fall in loss per e-fold of tokens over its last DESCENT_POINTS checkpoints
    (the slope of L on log D, negated); LawError when the loss is not falling there."""
    x = np.log(run.tokens[-DESCENT_POINTS:])
    y = run.loss[-DESCENT_POINTS:]
    k = -float(np.polyfit(x, y, 1)[0]) if x.size >= MIN_RUN_POINTS else np.nan
    if not (np.isfinite(k) and k > 0):
        raise LawError(
            "the run's loss is not falling over its last checkpoints: its own descent cannot be "
            "continued"
        )
    return k


def l0_is_the_floor(run: RunCurve, rule: Rule, value: float) -> bool:
    """Whether the answer may take L0 as the run's floor: its last checkpoint lies above L0 and
    a target lies above it too. Otherwise the run shows that L0 is not its floor (a dense model
    not converged on this data, docs/law.md §3) and its own descent is continued instead."""
    above = bool(run.loss[-1] > run.l0)
    return above and not (rule == "target" and value <= run.l0)


@dataclass(frozen=True)
class Course:
    """The run's course beyond its last checkpoint: L0 + A · D^(−b) (`descent` None), or, where
    L0 is not its floor, its own descent L_e − k · log(D / D_e) (`descent` = k)."""

    l0: float
    log_a: float
    exponent: float
    anchor_tokens: float
    anchor_loss: float
    descent: float | None = None

    def solve(self, rule: Rule, value: float) -> float:
        """Tokens at which the course meets the rule (raw tokens)."""
        if self.descent is None:
            return solve(rule, value, l0=self.l0, log_a=self.log_a, exponent=self.exponent)
        k = self.descent
        if rule == "marginal":
            # −dL/dD per billion tokens = k · 1e9 / D ≤ τ.
            return float(k * 1e9 / value)
        target = value if rule == "target" else self.l0 + value
        return float(self.anchor_tokens * np.exp((self.anchor_loss - target) / k))

    def loss_at(self, tokens: FloatArray) -> FloatArray:
        """The course's loss at `tokens`."""
        if self.descent is None:
            return loss_at(tokens, l0=self.l0, log_a=self.log_a, exponent=self.exponent)
        at = np.log(np.asarray(tokens, dtype=np.float64) / self.anchor_tokens)
        return np.asarray(self.anchor_loss - self.descent * at, dtype=np.float64)


def course(
    run: RunCurve,
    references: Sequence[RunCurve],
    law: FittedLaw | None = None,
    *,
    floor: bool = True,
) -> tuple[Course, Shape]:
    """The run's course (module docstring): on L0 as its floor, or (`floor` False) its own
    descent."""
    tokens, loss = float(run.tokens[-1]), float(run.loss[-1])
    if not floor:
        k = descent(run)
        found = Shape(0.0, "the run's own descent (L0 is not its floor)", (), descent=k)
        return Course(run.l0, np.nan, 0.0, tokens, loss, descent=k), found
    found = shape(run, references, law)
    log_a = log_level(run, found.exponent)
    return Course(run.l0, log_a, found.exponent, tokens, loss), found


def reference_errors(
    run: RunCurve,
    references: Sequence[RunCurve],
    law: FittedLaw | None = None,
    *,
    floor: bool = True,
) -> list[tuple[FloatArray, FloatArray]]:
    """The target rule's errors when every reference run is asked this run's question: cut
    where `run` stops, its course found from the other references (the run itself left out),
    each later checkpoint's loss as a target. Per reference run: the log distances
    log(truth / cut) and the log errors log(answer / truth)."""
    cut_at = float(run.tokens[-1])
    others = [r for r in references if r.run_id != run.run_id]
    out: list[tuple[FloatArray, FloatArray]] = []
    for ref in others:
        head = ref.cut(cut_at)
        if head.tokens.size < MIN_RUN_POINTS:
            continue
        try:
            if floor and head.loss[-1] <= head.l0:
                continue
            found, _ = course(head, [r for r in others if r.run_id != ref.run_id], law, floor=floor)
        except LawError:
            continue
        last = float(head.tokens[-1])
        later = ref.tokens > last * (1 + 1e-9)
        if floor:
            later &= ref.loss > ref.l0
        if not later.any():
            continue
        truth = ref.tokens[later]
        answers = np.array([found.solve("target", float(v)) for v in ref.loss[later]])
        out.append((np.log(truth / last), np.log(answers / truth)))
    return out


def error_interval(
    tokens: float,
    cut: float,
    errors: Sequence[tuple[FloatArray, FloatArray]],
    level: float,
) -> tuple[float, float]:
    """The interval of an answer `tokens` given at log distance d = log(tokens / cut) beyond
    the run: from each reference run, the error of its answer at the checkpoint nearest that
    distance, per unit of log distance; their conformal quantiles (ranks ⌊(n+1)·(1−level)/2⌋
    and ⌈(n+1)·(1+level)/2⌉ of n, the extremes where n is too small for the rank), scaled to
    d. One error per run: a run's checkpoints share its departures, they are not n more
    draws."""
    distance = max(float(np.log(max(tokens, cut) / cut)), 0.0)
    per_run = []
    for d, e in errors:
        i = int(np.argmin(np.abs(d - distance)))
        per_run.append(float(e[i] / d[i]))
    pool = np.sort(np.asarray(per_run, dtype=np.float64))
    lo_q, hi_q = conformal(pool, (1 - level) / 2), conformal(pool, (1 + level) / 2)
    # truth = answer · exp(−error · distance): the highest error gives the lowest truth.
    return float(tokens * np.exp(-hi_q * distance)), float(tokens * np.exp(-lo_q * distance))


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
    """The rule's answer on the run's own course (module docstring), capped at `max_tokens`,
    with the reference runs' interval at `level` for the target rule."""
    floor = l0_is_the_floor(run, rule, value)
    found, found_shape = course(run, references, law, floor=floor)
    tokens = found.solve(rule, value)
    capped = max_tokens is not None and tokens > max_tokens
    if capped:
        assert max_tokens is not None
        tokens = float(max_tokens)
    notes: list[str] = []
    if not floor:
        notes.append(
            f"the run's loss reaches L0={run.l0:.6g} or the target lies at or below it: L0 is "
            "not this run's floor (a dense model not converged on this data?), so the answer "
            f"continues the run's own descent ({found.descent:.3g} nats per e-fold of tokens "
            "over its last checkpoints), which never flattens"
        )
    cut = float(run.tokens[-1])
    interval: tuple[float, float] | None = None
    if level is not None:
        if rule != "target":
            notes.append(
                "the interval of an answer anchored on a run is measured for the target rule "
                "only: none is given for this rule"
            )
        else:
            errors = reference_errors(run, references, law, floor=floor)
            if len(errors) < MIN_POOL:
                notes.append(
                    f"only {len(errors)} reference run(s) can be asked this run's question "
                    f"beyond its last tokens (at least {MIN_POOL} make an interval): no interval"
                )
            else:
                interval = error_interval(tokens, cut, errors, level)
    return AnchoredAnswer(
        tokens=float(tokens),
        predicted_loss=float(found.loss_at(np.array([tokens]))[0]),
        floor_loss=run.l0,
        capped=bool(capped),
        tokens_interval=interval,
        shape=found_shape,
        anchor_tokens=cut,
        notes=tuple(notes),
    )


def anchored_loss(
    run: RunCurve,
    references: Sequence[RunCurve],
    tokens: FloatArray,
    law: FittedLaw | None = None,
    *,
    rule: Rule = "target",
    value: float | None = None,
) -> FloatArray:
    """The run's course at `tokens` (for the response's curve), the one the rule's answer is
    taken on (`value` None: a target above L0)."""
    floor = l0_is_the_floor(run, rule, np.inf if value is None else value)
    found, _ = course(run, references, law, floor=floor)
    return found.loss_at(np.asarray(tokens, dtype=np.float64))
