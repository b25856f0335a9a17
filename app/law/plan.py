"""Joint planning of method, pruning rate and tokens (docs/law.md §7, last paragraph)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.law.bootstrap import predict_interval
from app.law.errors import LawError
from app.law.intervals import IntervalKind, interval
from app.law.law import FittedLaw
from app.law.ranges import beyond_observed
from app.law.types import Features, FloatArray

DEFAULT_RHO_GRID: tuple[float, ...] = tuple(
    float(r) for r in np.round(np.arange(0.1, 0.701, 0.05), 4)
)
# Token grid: this many log-spaced values from budget/1000 up to the budget itself.
DEFAULT_TOKEN_STEPS = 13


@dataclass(frozen=True)
class PlanCandidate:
    """A pruning method with its fitted law, and the kind of interval its options get: the
    prediction interval where the law is calibrated, else (or with "confidence") the
    percentile interval of its refits' predictions."""

    method: str
    law: FittedLaw
    kind: IntervalKind = "prediction"
    #: The recovery recipe the law was fitted on (a label: candidates of one method may differ
    #: by recipe alone).
    recipe: str = "full"


@dataclass(frozen=True)
class PlanOption:
    """One (method, recipe, ρ, D) point of the plan with its predicted loss and interval, and
    how far D lies beyond the most tokens its method's fit observed (a factor; None for a law
    without ranges)."""

    method: str
    rho: float
    tokens: float
    predicted_loss: float
    lower: float | None
    upper: float | None
    n_after: float
    beyond_observed: float | None = None
    recipe: str = "full"


@dataclass(frozen=True)
class PlanResult:
    """Options ranked best first; `best` is the first option (None when there are none)."""

    options: list[PlanOption] = field(default_factory=list)
    best: PlanOption | None = None


def plan(
    candidates: Sequence[PlanCandidate],
    *,
    n0: float,
    l0: float,
    rho_min: float,
    token_budget: float,
    rho_grid: Sequence[float] | None = None,
    token_grid: Sequence[float] | None = None,
    level: float | None = None,
    max_options: int = 50,
) -> PlanResult:
    """Rank (method, ρ, D) options for pruning a dense model of `n0` parameters and loss `l0`.

    Semantics:
    - `rho_min` is the smallest acceptable pruning rate: the pruned model must have at most
      (1 − rho_min)·n0 parameters, so only ρ ≥ rho_min are considered (rho_min itself is always on
      the grid). The default ρ grid is 0.10, 0.15, …, 0.70.
    - `token_budget` is the most post-training tokens one may spend: only D ≤ budget are
      considered; the default D grid is 13 log-spaced values from budget/1000 to the budget.
    - Every option is predicted with its method's law; options are ranked by predicted loss,
      ties broken by fewer tokens, then by larger ρ (a smaller model). `best` is the first.
    - With `level`, `lower`/`upper` are a candidate's prediction interval when its law is
      calibrated and its kind is "prediction", else the percentile interval of its refits'
      predictions (None without either).
    - Every option states `beyond_observed`: D over the most tokens its method's law observed
      (`app.law.ranges.beyond_observed`; above `FAR_BEYOND` it is an extrapolation).
    - At most `max_options` options are returned (the best ones).
    """
    if not candidates:
        raise LawError("planning needs at least one method with a fitted law")
    if not 0 < rho_min < 1:
        raise LawError("rho_min must lie strictly between 0 and 1")
    if not np.isfinite(token_budget) or token_budget <= 0:
        raise LawError("token_budget must be positive and finite")
    if max_options < 1:
        raise LawError("max_options must be at least 1")
    rhos = sorted(
        {float(r) for r in (rho_grid if rho_grid is not None else DEFAULT_RHO_GRID)}
        | ({float(rho_min)} if rho_grid is None else set())
    )
    rhos = [r for r in rhos if rho_min - 1e-12 <= r < 1]
    if not rhos:
        raise LawError(f"no pruning rate on the grid is ≥ rho_min={rho_min:g} and < 1")
    if token_grid is None:
        tokens = np.geomspace(token_budget / 1000, token_budget, DEFAULT_TOKEN_STEPS)
    else:
        tokens = np.array([float(t) for t in token_grid if 0 < t <= token_budget])
        if tokens.size == 0:
            raise LawError("no token count on the grid is positive and within the budget")
    rho_col: FloatArray = np.repeat(np.array(rhos), tokens.size)
    tok_col: FloatArray = np.tile(tokens, len(rhos))
    x = Features(
        np.full(rho_col.size, float(n0)), rho_col, np.full(rho_col.size, float(l0)), tok_col
    )
    options: list[PlanOption] = []
    for cand in candidates:
        law = cand.law
        loss = law.form.predict(law.params, x)
        lower: FloatArray | None = None
        upper: FloatArray | None = None
        if level is not None and cand.kind == "prediction" and law.calibrated:
            band = interval(law, x, level=level)
            lower, upper = band.lower, band.upper
        elif level is not None and law.refits:
            lower, upper = predict_interval(
                law.form.name, law.refits, x, level, thetas=law.refit_thetas
            )
        ranges = law.ranges
        for i in range(rho_col.size):
            options.append(
                PlanOption(
                    method=cand.method,
                    rho=float(rho_col[i]),
                    tokens=float(tok_col[i]),
                    predicted_loss=float(loss[i]),
                    lower=float(lower[i]) if lower is not None else None,
                    upper=float(upper[i]) if upper is not None else None,
                    n_after=float(n0) * (1.0 - float(rho_col[i])),
                    beyond_observed=None
                    if ranges is None
                    else beyond_observed(ranges, float(tok_col[i])),
                    recipe=cand.recipe,
                )
            )
    options.sort(key=lambda o: (o.predicted_loss, o.tokens, -o.rho))
    options = options[:max_options]
    return PlanResult(options=options, best=options[0] if options else None)
