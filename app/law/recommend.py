"""How many tokens: the recommendation rules of docs/law.md §7.

With K = ρ^(−γ) N0^(−δ) and D in billions, for `p2` in closed form:
- ``marginal`` (τ, loss per billion tokens): the smallest D with −dL/dD ≤ τ,
  D* = (β K D_C / τ)^(1/(β+1));
- ``gap`` (ε, nats): the smallest D with L(D) − L∞ ≤ ε, D* = (K D_C / ε)^(1/β);
- ``target`` (L_t): the smallest D with L(D) ≤ L_t, D* = (K D_C / (L_t − L∞))^(1/β),
  unreachable (UnreachableTarget, with the floor) when L_t ≤ L∞.
Other forms are solved numerically: the rule's condition is evaluated on a log grid of D and the
first crossing is refined by Brent's method on log D. `max_tokens` caps any answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from app.law.bootstrap import percentile_interval
from app.law.errors import LawError, UnreachableTarget
from app.law.forms import Form, get_form
from app.law.intervals import IntervalKind, anchor, continued, forecast, interval
from app.law.law import FittedLaw
from app.law.ranges import beyond_observed
from app.law.types import Features, FloatArray, Params, Recommendation, Rule

# The search range of the numeric path: one token to 1e15 tokens (far beyond any recovery run).
MIN_TOKENS = 1.0
MAX_SEARCH_TOKENS = 1e15
_GRID_POINTS = 301
# Step in log D of the central difference for dL/dD: truncation error ~h², rounding ~1e-16/h.
_LOG_STEP = 1e-4


def _point(n0: float, rho: float, l0: float, tokens: FloatArray) -> Features:
    t = np.asarray(tokens, dtype=np.float64).reshape(-1)
    return Features(
        np.full(t.size, float(n0)), np.full(t.size, float(rho)), np.full(t.size, float(l0)), t
    )


def _unanchored_value(rule: Rule, value: float, l0: float, shift: float) -> float:
    """The value to ask of the law itself when its gap is scaled by exp(shift): a target's
    gap above L0, a slope and a gap to the floor all scale by exp(−shift)."""
    if shift == 0.0:
        return value
    if rule == "target":
        return l0 + (value - l0) * float(np.exp(-shift)) if value > l0 else value
    return value * float(np.exp(-shift))


def _rule_value(rule: Rule, threshold: float | None, target_loss: float | None) -> float:
    if rule in ("marginal", "gap"):
        if threshold is None:
            unit = "loss per billion tokens" if rule == "marginal" else "nats above the floor"
            raise LawError(f"rule {rule!r} needs a threshold ({unit})")
        if not np.isfinite(threshold) or threshold <= 0:
            raise LawError(f"the threshold of rule {rule!r} must be positive and finite")
        return float(threshold)
    if rule == "target":
        if target_loss is None:
            raise LawError("rule 'target' needs target_loss (nats per token)")
        if not np.isfinite(target_loss) or target_loss <= 0:
            raise LawError("target_loss must be positive and finite")
        return float(target_loss)
    raise LawError(f"unknown rule {rule!r}; use marginal, gap or target")


def marginal_gain(law: Form | str, params: Params, x: Features) -> FloatArray:
    """−dL/dD at `x` in nats per billion tokens (the `marginal` rule's quantity), by a central
    difference in log D, so it works for every form."""
    form = get_form(law) if isinstance(law, str) else law
    up = Features(x.n0, x.rho, x.l0, x.tokens * np.exp(_LOG_STEP))
    down = Features(x.n0, x.rho, x.l0, x.tokens * np.exp(-_LOG_STEP))
    slope = (form.predict(params, up) - form.predict(params, down)) / (2 * _LOG_STEP)
    return np.asarray(-slope / (x.tokens / 1e9), dtype=np.float64)


@dataclass(frozen=True)
class _Problem:
    """One rule on one (n0, ρ, L0) under one law: g(log tokens) ≤ 0 exactly where it is met."""

    law: Form
    params: Params
    n0: float
    rho: float
    l0: float
    rule: Rule
    value: float

    def features(self, tokens: FloatArray) -> Features:
        return _point(self.n0, self.rho, self.l0, tokens)

    def floor(self) -> float:
        return float(self.law.floor(self.params, self.features(np.ones(1)))[0])

    def g(self, log_t: FloatArray, floor: float) -> FloatArray:
        tokens = np.exp(log_t)
        if self.rule == "marginal":
            return marginal_gain(self.law, self.params, self.features(tokens)) - self.value
        loss = self.law.predict(self.params, self.features(tokens))
        if self.rule == "gap":
            return np.asarray(loss - floor - self.value, dtype=np.float64)
        return np.asarray(loss - self.value, dtype=np.float64)


def solve_tokens(
    form: str, params: Params, *, n0: float, rho: float, l0: float, rule: Rule, value: float
) -> float:
    """Tokens a rule asks for, uncapped: np.inf when not met below 1e15 tokens.

    Closed form when the form has one, else the numeric path. UnreachableTarget for a target at
    or below the floor.
    """
    problem = _Problem(get_form(form), params, float(n0), float(rho), float(l0), rule, value)
    floor = problem.floor()
    if rule == "target" and value <= floor:
        raise UnreachableTarget(value, floor)
    closed = problem.law.closed_form_tokens(params, problem.features(np.ones(1)), rule, value)
    if closed is None:
        return _numeric_tokens(problem, floor)
    tokens = float(closed[0])
    if not np.isfinite(tokens):
        return float("inf")
    return max(tokens, MIN_TOKENS)


def numeric_tokens(
    form: str, params: Params, *, n0: float, rho: float, l0: float, rule: Rule, value: float
) -> float:
    """The numeric path for any form (even one with a closed form, to cross-check it)."""
    problem = _Problem(get_form(form), params, float(n0), float(rho), float(l0), rule, value)
    floor = problem.floor()
    if rule == "target" and value <= floor:
        raise UnreachableTarget(value, floor)
    return _numeric_tokens(problem, floor)


def _numeric_tokens(problem: _Problem, floor: float) -> float:
    """The bracketing root finder on log D; assumes the rule, once met, stays met (a law whose
    loss and slope fall with D). MIN_TOKENS when met from the start, np.inf when never."""
    log_t = np.linspace(np.log(MIN_TOKENS), np.log(MAX_SEARCH_TOKENS), _GRID_POINTS)
    met = np.flatnonzero(problem.g(log_t, floor) <= 0)
    if met.size == 0:
        return float("inf")
    i = int(met[0])
    if i == 0:
        return MIN_TOKENS

    def scalar(lt: float) -> float:
        return float(problem.g(np.array([lt]), floor)[0])

    root = brentq(scalar, float(log_t[i - 1]), float(log_t[i]), xtol=1e-13, rtol=1e-14)
    return float(np.exp(root))


def recommend(
    law: FittedLaw,
    *,
    n0: float,
    rho: float,
    l0: float,
    rule: Rule,
    threshold: float | None = None,
    target_loss: float | None = None,
    max_tokens: float | None = None,
    level: float | None = None,
    kind: IntervalKind = "prediction",
) -> Recommendation:
    """The tokens a rule asks for (docs/law.md §7), the loss predicted there and the floor.

    `max_tokens` caps the answer (``capped=True``). With `level` and the law's refits, the
    rule is applied to every refit and ``tokens_interval`` holds the percentile interval; refits
    for which a target is unreachable, or a rule is not met below 1e15 tokens without a cap, are
    left out (None when none remain). With a calibration holding residual pools and `kind`
    "prediction", the `target` rule's interval is instead where the prediction band's lower
    and upper edges reach the target: the tokens within which a run's loss reaches it
    (docs/law.md §4); `marginal` and `gap` are properties of the mean curve and keep the
    refits' interval. When (n0, ρ, L0) is a run the fit saw, the law's gap is scaled to that
    run's level at its last checkpoints (`app.law.intervals.forecast`): every rule then asks
    the law for the correspondingly scaled value. ``beyond_observed`` says how far the answer
    lies beyond the most tokens the fit observed. A run whose first checkpoints are known is
    answered by `app.law.anchored` instead.
    """
    form, params, calibration = law.form.name, law.params, law.calibration
    asked = _rule_value(rule, threshold, target_loss)
    if max_tokens is not None and (not np.isfinite(max_tokens) or max_tokens <= 0):
        raise LawError("max_tokens must be positive and finite")
    shift = float(continued(calibration, _point(n0, rho, l0, np.ones(1))).shift[0])
    value = _unanchored_value(rule, asked, l0, shift)
    try:
        tokens = solve_tokens(form, params, n0=n0, rho=rho, l0=l0, rule=rule, value=value)
    except UnreachableTarget as exc:
        floor_here = float(anchor(np.array([exc.floor_loss]), np.array([l0]), np.array([shift]))[0])
        raise UnreachableTarget(asked, floor_here) from None
    capped = False
    if max_tokens is not None and tokens > max_tokens:
        tokens, capped = float(max_tokens), True
    if not np.isfinite(tokens):
        raise LawError(
            f"rule {rule!r} is not met below {MAX_SEARCH_TOKENS:.0e} tokens with this law; "
            f"loosen the threshold or set max_tokens"
        )
    x = _point(n0, rho, l0, np.array([tokens]))
    shifts, l0s = np.array([shift]), np.array([l0])
    predicted = float(anchor(law.form.predict(params, x), l0s, shifts)[0])
    floor = float(anchor(law.form.floor(params, x), l0s, shifts)[0])
    tokens_interval = None
    notes: tuple[str, ...] = ()
    if law.calibrated and kind == "prediction" and level is not None and rule == "target":
        tokens_interval, notes = band_tokens(
            law,
            n0=n0,
            rho=rho,
            l0=l0,
            target=asked,
            around=tokens,
            level=level,
            max_tokens=max_tokens,
        )
    elif law.refits and level is not None:
        samples: list[float] = []
        for p in law.refits:
            try:
                t = solve_tokens(form, p, n0=n0, rho=rho, l0=l0, rule=rule, value=value)
            except UnreachableTarget:
                continue
            if max_tokens is not None:
                t = min(t, float(max_tokens))
            if np.isfinite(t):
                samples.append(t)
        if samples:
            lo, hi = percentile_interval(np.array(samples)[:, None], level)
            tokens_interval = (float(lo[0]), float(hi[0]))
    return Recommendation(
        tokens=float(tokens),
        predicted_loss=predicted,
        floor_loss=floor,
        capped=capped,
        tokens_interval=tokens_interval,
        notes=notes,
        beyond_observed=beyond_observed(law.ranges, tokens) if law.ranges is not None else None,
    )


#: Points per decade of the token grid on which the band's crossing of a target is found.
_BAND_POINTS_PER_DECADE = 40
#: The band is searched this many decades on each side of the recommended tokens.
_BAND_DECADES = 4


def _first_crossing(log_t: FloatArray, values: FloatArray, target: float) -> float | None:
    """The smallest log D where `values` (on the grid `log_t`) falls to `target`, linear
    between grid points; None when it never does."""
    below = np.flatnonzero(values <= target)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(log_t[0])
    v0, v1 = values[i - 1], values[i]
    share = (v0 - target) / (v0 - v1) if v0 != v1 else 1.0
    return float(log_t[i - 1] + share * (log_t[i] - log_t[i - 1]))


def band_tokens(
    law: FittedLaw,
    *,
    n0: float,
    rho: float,
    l0: float,
    target: float,
    around: float,
    level: float,
    max_tokens: float | None,
) -> tuple[tuple[float, float] | None, tuple[str, ...]]:
    """Tokens at which the law's prediction band's lower and upper edges reach `target` (the
    law needs a calibration with residual pools).

    The band is evaluated on a log grid of ±4 decades around `around`. When the upper edge does
    not reach the target there (or below `max_tokens`) the interval is open above (its upper end
    is infinite), with a note; when even the lower edge does not, there is none.
    """
    top = around * 10.0**_BAND_DECADES
    if max_tokens is not None:
        top = min(top, float(max_tokens))
    bottom = max(MIN_TOKENS, min(around, top) / 10.0**_BAND_DECADES)
    n = max(2, int(np.ceil(np.log10(top / bottom) * _BAND_POINTS_PER_DECADE)) + 1)
    grid = np.geomspace(bottom, top, n)
    band = interval(law, _point(n0, rho, l0, grid), level=level)
    log_t = np.log(grid)
    low = _first_crossing(log_t, band.lower, target)
    high = _first_crossing(log_t, band.upper, target)
    if low is None:
        return None, (
            f"even the lower edge of the {level:.0%} prediction band does not reach the target "
            f"below {top:.3g} tokens: no token interval",
            *band.notes,
        )
    if high is None:
        return (float(np.exp(low)), float("inf")), (
            f"the upper edge of the {level:.0%} prediction band does not reach the target "
            f"below {top:.3g} tokens: the token interval is open above (a run may not reach "
            "the target at all)",
            *band.notes,
        )
    return (float(np.exp(low)), float(np.exp(high))), band.notes


def loss_curve(
    law: FittedLaw,
    *,
    n0: float,
    rho: float,
    l0: float,
    tokens: FloatArray,
    level: float | None = None,
    kind: IntervalKind = "prediction",
) -> tuple[FloatArray, FloatArray | None, FloatArray | None]:
    """Predicted loss over `tokens` for one (n0, ρ, L0), with a band when `level` is given:
    the prediction band when the law is calibrated and `kind` is "prediction", else the
    refits' percentile band (else None). A run the fit saw keeps its own level
    (`recommend`)."""
    x = _point(n0, rho, l0, tokens)
    loss = forecast(law, x)
    if level is None:
        return loss, None, None
    if kind == "prediction" and law.calibrated:
        band = interval(law, x, level=level)
    elif law.refits:
        band = interval(law, x, level=level, kind="confidence")
    else:
        return loss, None, None
    return loss, band.lower, band.upper
