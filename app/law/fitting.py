"""Fitting a law form to observations, exactly as docs/law.md §4 says.

Log-space parameters, the summed Huber (δ = 1e-3) of log L̂ − log L, L-BFGS-B with the analytic
gradient inside box bounds, started from a grid that is evaluated in one vectorised pass; only
the best few starts are polished. The optimiser's status travels with the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult, minimize

from app.law.blas import single_thread
from app.law.errors import LawError, NotEnoughData
from app.law.forms import Form, get_form
from app.law.metrics import evaluate, split
from app.law.objective import HUBER_DELTA, huber, huber_slope
from app.law.ranges import from_dataset
from app.law.types import Dataset, FitResult, FloatArray, HoldOut

# The optimiser sees the objective divided by δ: a point in the linear Huber region then
# contributes |r| − δ/2 (order 1e-2, not 1e-5), so L-BFGS-B's relative stopping test is not
# met before the fit is done. The minimiser is unchanged; the reported objective is unscaled.
_SCALE = 1.0 / HUBER_DELTA
_OPTIONS = {"gtol": 1e-9, "maxcor": 20}
_MAXITER = 5000
# Relative decrease at which the Huber polish stops: 1e-11 of a scaled objective near 1 moves
# predictions by far less than 1e-6 relative.
_FTOL = 1e-11
# δ of the smoothing pass: larger than any log residual a sane fit has, i.e. least squares.
_SMOOTH_DELTA = 1.0
_SMOOTH_FTOL = 1e-10
# The smoothing pass only has to reach the basin; along a flat valley (a constant drifting to
# its bound) it would otherwise spend a thousand steps that the Huber polish redoes anyway.
_SMOOTH_MAXITER = 1000
# How many distinct least-squares endpoints get the (slow) Huber polish.
_N_HUBER_POLISH = 2

Objective = Callable[[FloatArray], tuple[float, FloatArray]]


@dataclass(frozen=True)
class Polished:
    """One L-BFGS-B run: where it ended, the unscaled objective, and its status."""

    theta: FloatArray
    objective: float
    converged: bool
    message: str


def objective_function(form: Form, data: Dataset, delta: float = HUBER_DELTA) -> Objective:
    """θ ↦ (summed Huber_δ of log residuals, its gradient), both unscaled."""
    log_loss = np.log(data.loss)

    def fun(theta: FloatArray) -> tuple[float, FloatArray]:
        log_pred, jac = form.log_model(theta[None, :], data, grad=True)
        assert jac is not None
        r = log_pred[0] - log_loss
        value = float(np.sum(huber(r, delta)))
        grad = huber_slope(r, delta) @ jac[0]
        return value, np.asarray(grad, dtype=np.float64)

    return fun


def _lbfgsb(
    fun: Objective,
    start: FloatArray,
    bounds: list[tuple[float, float]],
    ftol: float,
    maxiter: int = _MAXITER,
) -> OptimizeResult:
    def scaled(theta: FloatArray) -> tuple[float, FloatArray]:
        value, grad = fun(theta)
        return value * _SCALE, grad * _SCALE

    options = {**_OPTIONS, "ftol": ftol, "maxiter": maxiter}
    return minimize(scaled, start, jac=True, method="L-BFGS-B", bounds=bounds, options=options)


def _clip_start(form: Form, data: Dataset, theta0: FloatArray) -> FloatArray:
    bounds = form.bounds(data)
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    # A zero constant comes in as log 0 = −inf: start it at its lower bound instead.
    return np.clip(np.nan_to_num(theta0, nan=0.0, neginf=-np.inf, posinf=np.inf), lo, hi)


def smooth(form: Form, data: Dataset, theta0: FloatArray) -> FloatArray:
    """A least-squares pass on log residuals (Huber with a δ no residual reaches).

    It is smooth, so L-BFGS-B converges in tens of steps, and it lands next to the Huber
    minimum of the same basin; only a loose tolerance is needed since the Huber polish follows.
    """
    fun = objective_function(form, data, _SMOOTH_DELTA)
    with single_thread():
        res = _lbfgsb(
            fun, _clip_start(form, data, theta0), form.bounds(data), _SMOOTH_FTOL, _SMOOTH_MAXITER
        )
    return np.asarray(res.x, dtype=np.float64)


def polish(form: Form, data: Dataset, theta0: FloatArray, *, ftol: float = _FTOL) -> Polished:
    """L-BFGS-B on the summed Huber (δ = 1e-3) objective from one start, inside the bounds."""
    fun = objective_function(form, data)
    with single_thread():
        res = _lbfgsb(fun, _clip_start(form, data, theta0), form.bounds(data), ftol)
    theta = np.asarray(res.x, dtype=np.float64)
    value, _ = fun(theta)
    return Polished(theta, value, bool(res.success), str(res.message))


def _optimise_block(
    law: Form,
    data: Dataset,
    warm: FloatArray | None,
    *,
    grid: bool,
    smooth_first: bool,
    ftol: float,
) -> tuple[Polished, int]:
    starts: list[FloatArray] = []
    n_starts = 0
    if warm is not None:
        starts.append(warm)
        n_starts += 1
    if grid:
        starts += list(law.select_starts(data, law.n_polish))
        n_starts += law.start_grid(data).shape[0]
    # Duplicate starts (a warm start on a grid point) would only repeat work.
    candidates = list(np.unique(np.array(starts), axis=0))
    if smooth_first:
        # The Huber polish (nearly L1 at 0.5% noise) is the slow part, so it only runs from the
        # best least-squares endpoints; endpoints with the same objective share a basin.
        fun = objective_function(law, data)
        ends = [smooth(law, data, c) for c in candidates]
        values = np.array([fun(e)[0] for e in ends])
        order = np.argsort(values, kind="stable")
        candidates = []
        kept: list[float] = []
        for i in order:
            if any(abs(values[i] - v) <= 1e-7 * max(abs(v), 1e-300) for v in kept):
                continue
            candidates.append(ends[i])
            kept.append(float(values[i]))
            if len(candidates) == _N_HUBER_POLISH:
                break
    best: Polished | None = None
    for theta0 in candidates:
        candidate = polish(law, data, theta0, ftol=ftol)
        if best is None or candidate.objective < best.objective:
            best = candidate
    assert best is not None
    return best, n_starts


def optimise(
    law: Form,
    data: Dataset,
    *,
    warm: FloatArray | None,
    grid: bool,
    smooth_first: bool = True,
    ftol: float = _FTOL,
) -> tuple[Polished, int]:
    """The best polished fit vector from the grid's best starts and/or a warm start.

    A form whose objective separates into independent blocks (one per run for `curve`) is
    optimised block by block: many 3-parameter problems converge where one 3R-parameter problem
    stalls, and the sum of the block minima is the joint minimum.
    """
    if warm is None and not grid:
        raise LawError("an optimisation needs a warm start or the start grid")
    blocks = law.blocks(data)
    if blocks is None:
        return _optimise_block(law, data, warm, grid=grid, smooth_first=smooth_first, ftol=ftol)
    theta = np.empty(law.n_parameters(data))
    objective = 0.0
    messages: list[str] = []
    converged = True
    n_starts = 0
    for mask, part in blocks:
        result, n = _optimise_block(
            law,
            data.take(mask),
            warm[part] if warm is not None else None,
            grid=grid,
            smooth_first=smooth_first,
            ftol=ftol,
        )
        theta[part] = result.theta
        objective += result.objective
        # Report the first block that did not converge, else the first block's message.
        if not messages or (converged and not result.converged):
            messages = [result.message]
        converged = converged and result.converged
        n_starts = max(n_starts, n)
    return Polished(theta, objective, converged, messages[0]), n_starts


def _check_data(data: Dataset) -> None:
    if len(data) == 0:
        raise NotEnoughData("no observations to fit")
    if not np.all(np.isfinite(data.loss)) or np.any(data.loss <= 0):
        raise LawError("observed losses must be finite and positive")


def fit(
    form: str,
    data: Dataset,
    *,
    holdout: HoldOut | None = None,
    warm_start: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit `form` to `data` (docs/law.md §4).

    With `holdout`, the law is fitted on the protocol's train split (§6) and `holdout_metrics`
    are computed on the held-out points; `metrics` are always on the data the law was fitted to.
    `warm_start` adds a starting point to the grid's best (e.g. the previous fit of the same
    runs). NotEnoughData when there are fewer observations than parameters.
    """
    law = get_form(form)
    _check_data(data)
    train, test = data, None
    if holdout is not None:
        mask_train, mask_test = split(data, holdout)
        train, test = data.take(mask_train), data.take(mask_test)
    n_params = law.n_parameters(train)
    if len(train) < n_params:
        raise NotEnoughData(
            f"form {form!r} has {n_params} parameters but only {len(train)} observations "
            f"to fit{' after the ' + holdout + ' split' if holdout else ''}; add observations "
            f"or choose a form with fewer parameters"
        )
    warm = law.to_vector(warm_start, train) if warm_start is not None else None
    best, n_starts = optimise(law, train, warm=warm, grid=True)
    params = law.from_vector(best.theta, train)
    holdout_metrics = evaluate(form, params, test) if test is not None else None
    return FitResult(
        form=form,
        params=params,
        objective=best.objective,
        converged=best.converged,
        message=best.message,
        n_starts=n_starts,
        n_observations=len(train),
        n_runs=int(np.unique(train.run).size),
        metrics=evaluate(form, params, train),
        ranges=from_dataset(train),
        holdout_metrics=holdout_metrics,
    )
