"""Prediction intervals for where a run's loss will land, calibrated on held-out runs
(docs/law.md §4).

The bootstrap band (`app.law.bootstrap`) says how well the *mean curve* is known; a new run's
loss also departs from that curve (its own offset, the shape the law misses, evaluation noise),
and an extrapolation departs further the further it goes. Both are measured here the way the
question is asked, on the fit's own data:

- ``runs``: whole runs held out (grouped K-fold), predicted by the law refitted without them —
  a new run inside the fitted ranges;
- ``D``: part of the runs cut after their first 30%, 50% or 80% of checkpoints, the rest
  predicted — a run continued beyond the tokens it has seen;
- ``N0`` / ``rho``: the largest sizes / highest pruning rates left out and predicted —
  extrapolation beyond the fitted N0 / ρ;
- ``seen``: the fit's own residuals — a point inside a run the fit has seen.

Each residual is log(observed) − log(predicted out of sample), weighted so that every held-out
run counts once (runs are the unit, never single checkpoints). An extrapolating pool keeps each
residual's *distance* (log of how far beyond the data its fit saw: N0 or ρ; for tokens, in units
of the log span of tokens the run was seen over), grouped in bins; a query takes the bin nearest
its own distance and scales the residuals up (never down) linearly when it lies further than the
bin. The interval is the pool's weighted quantiles on a log scale (a run that continues a fitted
run also keeps that run's level: `forecast`). The assumption is
that runs are exchangeable: a new run relates to the fitted ones as the held-out runs did to the
rest. Outside the fitted ranges this is an assumption about extrapolation, and predictions say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

from app.law.bootstrap import predict_interval, refit_runs
from app.law.calibration import (
    MIN_LOG_SPAN,
    Bin,
    Calibration,
    Coverage,
    RunKey,
    log_span,
    make_bins,
)
from app.law.errors import LawError, NotEnoughData
from app.law.fitting import fit as fit_law
from app.law.fitting import optimise
from app.law.forms import CurveForm, Form, get_form
from app.law.law import FittedLaw
from app.law.metrics import RHO_TOLERANCE, evaluate, levels, split, top_level
from app.law.types import Dataset, Features, FitResult, FloatArray, HoldOut, Params

BoolArray = npt.NDArray[np.bool_]
IntervalKind = Literal["prediction", "confidence"]
PoolKind = Literal["seen", "runs", "D", "N0", "rho"]
POOL_KINDS: tuple[PoolKind, ...] = ("seen", "runs", "D", "N0", "rho")

#: Whole-run folds for the ``runs`` pool (fewer when there are fewer runs).
RUN_FOLDS = 10
#: Groups of runs cut in turn for the ``D`` pool, and where they are cut (share of checkpoints).
D_GROUPS = 5
D_CUTS = (0.3, 0.5, 0.8)
#: A continued run keeps the level of its gap at its last checkpoints: how many, and the most
#: it may depart from the law (a factor e² on the gap either way).
ANCHOR_POINTS = 2
ANCHOR_LIMIT = 2.0
#: Calibration fits refit warm from the point estimate, like bootstrap refits.
CALIBRATION_FTOL = 1e-8
EXTRAPOLATION_GRID = True
# What an extrapolating pool's distance measures, for warnings.
_FAR = {"D": "tokens", "N0": "sizes (N0)", "rho": "pruning rates"}
# Relative tolerance when matching a query point's (n0, ρ, L0) to a fitted run.
_MATCH_RTOL = 1e-6


# --------------------------------------------------------------------------- calibration


def _run_weights(data: Dataset) -> FloatArray:
    """1 / (points of the run) for each point: every run weighs one in total."""
    _, inverse, counts = np.unique(data.run, return_inverse=True, return_counts=True)
    return np.asarray(1.0 / counts[inverse], dtype=np.float64)


def _refit(law: Form, train: Dataset, params: Params, *, grid: bool) -> dict[str, float]:
    """The law refitted on `train`, warm from `params` (and from the start grid when asked)."""
    if len(train) < law.n_parameters(train):
        raise NotEnoughData("too few points to refit")
    warm = law.to_vector(params, train)
    best, _ = optimise(law, train, warm=warm, grid=grid, smooth_first=grid, ftol=CALIBRATION_FTOL)
    return law.from_vector(best.theta, train)


def anchor(values: FloatArray, l0: FloatArray, shift: FloatArray) -> FloatArray:
    """Losses with their gap above L0 scaled by exp(shift): L0 + (L − L0)·e^shift.

    A monotone map, so it applies to a prediction and to both edges of its band alike; a loss
    at or below L0 (a form without an L0 term can predict one) is left as it is."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = l0 + (values - l0) * np.exp(shift)
    return np.asarray(np.where(values > l0, scaled, values), dtype=np.float64)


def checkpoint_noise(law: Form, params: Params, data: Dataset) -> float:
    """The noise of one checkpoint's loss (nats) about its run's smooth course: a robust spread
    of the differences of consecutive residuals within runs, / √2. A run's own offset from the
    law cancels in the differences, so this is what a run's last checkpoints cannot tell from
    a real departure."""
    with np.errstate(over="ignore", invalid="ignore"):
        residual = data.loss - law.predict_data(params, data)
    diffs = []
    for r in np.unique(data.run):
        idx = np.flatnonzero(data.run == r)
        idx = idx[np.argsort(data.x.tokens[idx], kind="stable")]
        diffs.append(np.diff(residual[idx]))
    joined = np.concatenate(diffs) if diffs else np.zeros(0)
    joined = joined[np.isfinite(joined)]
    if joined.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(joined)) / np.sqrt(2.0))


def raw_anchor(law: Form, params: Params, run: Dataset, noise: float) -> tuple[float, float]:
    """A run's mean log ratio of observed to predicted gap (L − L0) over its last ANCHOR_POINTS
    checkpoints, and the variance that checkpoint noise alone gives it (noise² / (k·g²) for a
    mean gap g over k checkpoints); (0, inf) when a gap there is not positive."""
    order = np.argsort(run.x.tokens, kind="stable")[-ANCHOR_POINTS:]
    last = run.take(order)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predicted = law.predict_data(params, last)
        observed_gap = last.loss - last.x.l0
        predicted_gap = predicted - last.x.l0
        if np.any(observed_gap <= 0) or np.any(predicted_gap <= 0):
            return 0.0, float("inf")
        value = float(np.mean(np.log(observed_gap / predicted_gap)))
        variance = noise**2 / (len(last) * float(np.mean(observed_gap)) ** 2)
    if not np.isfinite(value):
        return 0.0, float("inf")
    return value, variance


def between_runs(anchors: Sequence[tuple[float, float]]) -> float:
    """The variance of the runs' true levels: the anchors' mean square less the part their
    noise explains (method of moments, at least 0)."""
    usable = [(a, v) for a, v in anchors if np.isfinite(v)]
    if not usable:
        return 0.0
    return max(float(np.mean([a * a for a, _ in usable]) - np.mean([v for _, v in usable])), 0.0)


def shrink(value: float, variance: float, tau2: float) -> float:
    """An anchor shrunk towards 0 by τ² / (τ² + its noise variance), clipped to ±ANCHOR_LIMIT:
    a gap that checkpoint noise could have made says little about a run's level."""
    if not np.isfinite(variance) or tau2 <= 0:
        return 0.0
    return float(np.clip(value * tau2 / (tau2 + variance), -ANCHOR_LIMIT, ANCHOR_LIMIT))


def _log_residual(
    law: Form, params: Params, test: Dataset, shift: FloatArray | None = None
) -> FloatArray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predicted = law.predict_data(params, test)
        if shift is not None:
            predicted = anchor(predicted, test.x.l0, shift)
        return np.asarray(np.log(test.loss) - np.log(predicted), dtype=np.float64)


def _shifts(
    law: Form,
    params: Params,
    fitted: Dataset,
    runs: FloatArray,
    points: Dataset,
    *,
    noise: float,
    tau2: float,
) -> FloatArray:
    """Each point's run anchor, measured on that run's points in `fitted` (0 for others)."""
    shift = np.zeros(len(points))
    for r in runs:
        mine_fitted = fitted.run == r
        if not np.any(mine_fitted):
            continue
        value, variance = raw_anchor(law, params, fitted.take(mine_fitted), noise)
        shift[points.run == r] = shrink(value, variance, tau2)
    return shift


@dataclass
class _Collected:
    """Held-out residuals, their weights and distances; with `per_draw`, binned one draw per
    held-out run of each hold-out (`make_bins` with draws) and read at conformal ranks."""

    per_draw: bool = False
    residuals: list[FloatArray] = field(default_factory=list)
    weights: list[FloatArray] = field(default_factory=list)
    distances: list[FloatArray] = field(default_factory=list)
    draws: list[npt.NDArray[np.int64]] = field(default_factory=list)
    _next_draw: int = 0

    def add(self, residual: FloatArray, test: Dataset, distance: FloatArray) -> None:
        self.residuals.append(residual)
        self.weights.append(_run_weights(test))
        self.distances.append(distance)
        _, inverse = np.unique(test.run, return_inverse=True)
        ids = np.asarray(inverse, dtype=np.int64).reshape(-1) + self._next_draw
        self.draws.append(ids)
        self._next_draw = int(np.max(ids)) + 1 if ids.size else self._next_draw

    def bins(self) -> list[Bin]:
        if not self.residuals:
            return []
        return make_bins(
            np.concatenate(self.residuals),
            np.concatenate(self.weights),
            np.concatenate(self.distances),
            np.concatenate(self.draws) if self.per_draw else None,
        )


def _runs_pool(
    law: Form, data: Dataset, params: Params
) -> tuple[_Collected, tuple[dict[str, float], ...]]:
    """Whole runs held out in K folds: their residuals, and the K refits (`Calibration.folds`)."""
    out = _Collected()
    refits: list[dict[str, float]] = []
    runs = np.unique(data.run)
    k = min(RUN_FOLDS, runs.size)
    if k < 2:
        return out, ()
    order = np.random.default_rng(0).permutation(runs)
    for fold in range(k):
        held = order[fold::k]
        test_mask = np.isin(data.run, held)
        train, test = data.take(~test_mask), data.take(test_mask)
        try:
            refit = _refit(law, train, params, grid=False)
        except LawError:
            continue
        refits.append(dict(refit))
        out.add(_log_residual(law, refit, test), test, np.zeros(len(test)))
    return out, tuple(refits)


def _cut_runs(data: Dataset, held: FloatArray, share: float) -> tuple[BoolArray, FloatArray]:
    """Mask of the points kept when runs `held` keep only their first `share` of checkpoints,
    and each point's distance beyond the last kept tokens of its run (0 when kept): the log
    of the tokens past the last kept checkpoint over the log span the kept ones cover."""
    keep = np.ones(len(data), dtype=bool)
    distance = np.zeros(len(data))
    for r in held:
        idx = np.flatnonzero(data.run == r)
        if idx.size < 2:
            continue
        idx = idx[np.argsort(data.x.tokens[idx], kind="stable")]
        n_keep = max(1, int(np.floor(share * idx.size + 1e-9)))
        if n_keep >= idx.size:
            continue
        keep[idx[n_keep:]] = False
        first, last = data.x.tokens[idx[0]], data.x.tokens[idx[n_keep - 1]]
        span = log_span(np.array([first]), np.array([last]))[0]
        distance[idx[n_keep:]] = np.log(data.x.tokens[idx[n_keep:]] / last) / span
    return keep, distance


def _d_pool(law: Form, data: Dataset, params: Params) -> _Collected:
    """Runs cut in groups at each of D_CUTS and their later checkpoints predicted by the law
    refitted on the rest, anchored as a continued run is (`forecast`). Each cut run is one
    draw: its checkpoints share its departure from the law, so a bin keeps one residual per
    cut run and is read at conformal ranks (`make_bins`)."""
    out = _Collected(per_draw=True)
    runs = np.unique(data.run)
    groups = min(D_GROUPS, runs.size)
    order = np.random.default_rng(1).permutation(runs)
    per_run = law.blocks(data) is not None
    noise = checkpoint_noise(law, params, data)
    tau2 = between_runs([raw_anchor(law, params, data.take(data.run == r), noise) for r in runs])
    for share in D_CUTS:
        for g in range(groups):
            held = order[g::groups]
            keep, distance = _cut_runs(data, held, share)
            if np.all(keep):
                continue
            train, test = data.take(keep), data.take(~keep)
            try:
                # A form with parameters per run (`curve`) warm-started from the full fit would
                # keep the cut runs' curves through the points held out: it restarts from its
                # (cheap, per-run) grid instead.
                refit = _refit(law, train, params, grid=per_run)
            except LawError:
                continue
            shift = _shifts(law, refit, train, held, test, noise=noise, tau2=tau2)
            out.add(_log_residual(law, refit, test, shift), test, distance[~keep])
    return out


def _extrapolation_pool(
    law: Form, data: Dataset, params: Params, variable: Literal["n0", "rho"]
) -> _Collected:
    """Leave out the top 1, 2, … levels of `variable` (per family for N0; levels as the N0 and
    ρ protocols find them, `app.law.metrics.levels`), keeping ≥ 2 levels (≥ 1 when there are
    only two), and predict them from the rest."""
    out = _Collected()
    values = getattr(data.x, variable)
    level = levels(data, variable)
    groups = (
        np.array(data.family if data.family else ("",) * len(data), dtype=object)
        if variable == "n0"
        else np.zeros(len(data), dtype=object)
    )
    n_levels = max((int(np.max(level[groups == g])) + 1 for g in np.unique(groups)), default=0)
    if n_levels < 2:
        return out
    for k in range(1, max(2, n_levels - 1)):
        test_mask = top_level(data, variable, k)
        if not np.any(test_mask) or np.all(test_mask):
            continue
        # Distance from the largest value each held-out point's group kept.
        top = np.ones(len(data))
        for g in np.unique(groups):
            kept = (groups == g) & ~test_mask
            if np.any(kept):
                top[groups == g] = np.max(values[kept])
        train, test = data.take(~test_mask), data.take(test_mask)
        try:
            refit = _refit(law, train, params, grid=EXTRAPOLATION_GRID)
        except LawError:
            continue
        distance = np.log(values[test_mask] / top[test_mask])
        out.add(_log_residual(law, refit, test), test, distance)
    return out


def run_keys(form: str, params: Params, data: Dataset) -> tuple[RunKey, ...]:
    """Each run's id, (n0, ρ, L0), largest tokens seen and gap anchor under `params`."""
    law = get_form(form)
    noise = checkpoint_noise(law, params, data)
    present = np.unique(data.run)
    raws = [raw_anchor(law, params, data.take(data.run == r), noise) for r in present]
    tau2 = between_runs(raws)
    keys = []
    for r, (value, variance) in zip(present, raws, strict=True):
        mine = data.run == r
        keys.append(
            RunKey(
                run_id=data.run_ids[int(r)],
                n0=float(np.median(data.x.n0[mine])),
                rho=float(np.median(data.x.rho[mine])),
                l0=float(np.median(data.x.l0[mine])),
                tokens_max=float(np.max(data.x.tokens[mine])),
                tokens_min=float(np.min(data.x.tokens[mine])),
                anchor=shrink(value, variance, tau2),
            )
        )
    return tuple(keys)


def runs_only(form: str, data: Dataset, result: FitResult) -> Calibration:
    """The runs of a fit (for anchoring continued runs) without residual pools: what a fit
    without a bootstrap keeps."""
    x = data.x
    return Calibration(
        pools={},
        runs=run_keys(form, result.params, data),
        n0_range=(float(np.min(x.n0)), float(np.max(x.n0))),
        rho_range=(float(np.min(x.rho)), float(np.max(x.rho))),
        tokens_range=(float(np.min(x.tokens)), float(np.max(x.tokens))),
    )


def calibrate(form: str, data: Dataset, result: FitResult) -> Calibration:
    """The residual pools of `result` (a fit of `form` to `data`), measured on `data`."""
    law = get_form(form)
    params = result.params
    base = runs_only(form, data, result)
    by_run = {key.run_id: key.anchor for key in base.runs}
    own_shift = np.array([by_run[data.run_ids[int(r)]] for r in data.run])
    seen = _Collected()
    seen.add(_log_residual(law, params, data, own_shift), data, np.zeros(len(data)))
    pools: dict[str, list[Bin]] = {"seen": seen.bins(), "D": _d_pool(law, data, params).bins()}
    notes: list[str] = []
    folds: tuple[dict[str, float], ...] = ()
    if isinstance(law, CurveForm):
        notes.append("the curve form has one law per run: intervals only for fitted runs")
    else:
        runs_pool, folds = _runs_pool(law, data, params)
        pools["runs"] = runs_pool.bins()
        pools["N0"] = _extrapolation_pool(law, data, params, "n0").bins()
        pools["rho"] = _extrapolation_pool(law, data, params, "rho").bins()
    for kind in ("runs", "D", "N0", "rho"):
        if kind in pools and not pools[kind]:
            notes.append(f"no {kind} pool: the data allow no such hold-out")
    return replace(
        base, pools={k: v for k, v in pools.items() if v}, notes=tuple(notes), folds=folds
    )


# --------------------------------------------------------------------------- intervals


def _pool_quantiles(
    bins: Sequence[Bin], distance: FloatArray, level: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Median, lower and upper residual quantile at each query distance."""
    probs = [0.5, (1 - level) / 2, (1 + level) / 2]
    table = np.array([b.quantiles(probs) for b in bins])  # (bins, 3)
    centers = np.array([b.distance for b in bins])
    # The nearest bin in log distance (distance 0 → the first bin).
    safe_c = np.log(np.maximum(centers, 1e-12))
    safe_q = np.log(np.maximum(distance, 1e-12))
    nearest = np.argmin(np.abs(safe_q[:, None] - safe_c[None, :]), axis=1)
    chosen = table[nearest]
    scale = np.where(
        centers[nearest] > 0, np.maximum(1.0, distance / np.maximum(centers[nearest], 1e-12)), 1.0
    )
    return chosen[:, 0] * scale, chosen[:, 1] * scale, chosen[:, 2] * scale


@dataclass(frozen=True)
class Continued:
    """Which query points continue a fitted run: the run's largest tokens seen and its gap
    anchor per point (0 for the others), and the ids of the runs continued."""

    matched: BoolArray
    tokens_max: FloatArray
    shift: FloatArray
    run_ids: tuple[str, ...]
    span: FloatArray | None = None  # log span of tokens the run was seen over (matched points)


def continued(calibration: Calibration | None, x: Features) -> Continued:
    """The fitted run each point continues, matched by (n0, ρ, L0) to a relative 1e-6."""
    n = len(x)
    if calibration is None or not calibration.runs:
        return Continued(np.zeros(n, dtype=bool), np.zeros(n), np.zeros(n), ())
    keys, spans, tmax, shifts = calibration.run_table
    # Most queries are about runs that were not fitted: when no point has a fitted run's N0,
    # nothing matches, and the (points, runs, 3) comparison below is skipped.
    n0_close = np.abs(x.n0[:, None] - keys[None, :, 0]) <= _MATCH_RTOL * np.abs(keys[None, :, 0])
    if not n0_close.any():
        return Continued(np.zeros(n, dtype=bool), np.zeros(n), np.zeros(n), ())
    points = np.stack([x.n0, x.rho, x.l0], axis=-1)
    # np.isclose(points, keys, rtol=_MATCH_RTOL, atol=0) for finite values, without its
    # overhead: this runs several times per prediction.
    close = np.all(
        np.abs(points[:, None, :] - keys[None, :, :]) <= _MATCH_RTOL * np.abs(keys[None, :, :]),
        axis=-1,
    )
    matched = np.any(close, axis=1)
    which = np.argmax(close, axis=1)
    ids = sorted({calibration.runs[int(j)].run_id for j in which[matched]})
    return Continued(
        matched=matched,
        tokens_max=np.where(matched, tmax[which], 0.0),
        shift=np.where(matched, shifts[which], 0.0),
        run_ids=tuple(ids),
        span=np.where(matched, spans[which], MIN_LOG_SPAN),
    )


def forecast(
    law: FittedLaw,
    x: Features,
    *,
    center: FloatArray | None = None,
    runs: Continued | None = None,
) -> FloatArray:
    """The law's predictions at `x`, with the gap of each point that continues a fitted run
    scaled to that run's level at its last checkpoints (docs/law.md §4). `center` (the law's
    own predictions) and `runs` (`continued(law.calibration, x)`) may pass what the caller
    has."""
    if center is None:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            center = law.form.predict(law.params, x)
    shift = (runs if runs is not None else continued(law.calibration, x)).shift
    return anchor(center, x.l0, shift) if np.any(shift != 0) else center


def continuation_note(
    calibration: Calibration | None, x: Features, runs: Continued | None = None
) -> list[str]:
    """A warning naming the fitted runs whose own level the forecast keeps, if any."""
    ids = (runs if runs is not None else continued(calibration, x)).run_ids
    if not ids:
        return []
    shown = ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
    return [
        f"point(s) continue fitted run(s) {shown}: the forecast keeps each run's gap above L0 "
        f"at its last {ANCHOR_POINTS} checkpoints (docs/law.md §4)"
    ]


def _beyond(value: FloatArray, lo: float, hi: float) -> FloatArray:
    """Log distance outside [lo, hi] (0 inside)."""
    with np.errstate(divide="ignore"):
        above = np.log(np.maximum(value / hi, 1.0))
        below = np.log(np.maximum(lo / value, 1.0))
    return np.asarray(np.maximum(above, below), dtype=np.float64)


def fold_spread(law: FittedLaw, x: Features) -> FloatArray:
    """The delete-a-group jackknife standard deviation of the log prediction at `x` over the
    calibration's whole-run refits, √((K − 1)/K · Σ (log p_k − mean)²): how much the fitted
    law's answer there rests on which runs it saw. Zero without at least two refits."""
    folds = law.calibration.folds if law.calibration is not None else ()
    if len(folds) < 2:
        return np.zeros(len(x))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logs = np.log(np.array([law.form.predict(p, x) for p in folds]))
    k = logs.shape[0]
    spread = np.sqrt((k - 1) / k * np.sum((logs - np.mean(logs, axis=0)) ** 2, axis=0))
    return np.asarray(np.nan_to_num(spread, nan=0.0), dtype=np.float64)


@dataclass(frozen=True)
class Band:
    """A prediction band and which pool set each point's width (for reports and warnings)."""

    lower: FloatArray
    upper: FloatArray
    pools: tuple[str, ...]
    notes: tuple[str, ...] = ()


def prediction_band(
    law: FittedLaw,
    x: Features,
    level: float,
    *,
    center: FloatArray | None = None,
    runs: Continued | None = None,
) -> Band:
    """The prediction interval at `level` around the law's forecast at `x` (`forecast`).

    Each point takes every pool that describes it (a fitted run: ``seen`` inside its tokens,
    ``D`` beyond them; otherwise ``runs``, plus ``N0``/``rho``/``D`` for each variable outside
    the fitted ranges) and the widest of their intervals: the pool's quantiles at
    (1 ∓ level)/2 around its median, on the log scale, shifted by that median. `center` and
    `runs` are as in `forecast`. LawError when the law has no calibration with pools.
    """
    calibration = law.calibration
    if calibration is None or not calibration.has_pools:
        raise LawError("a prediction interval needs the fit's calibration")
    runs = runs if runs is not None else continued(calibration, x)
    forecast_loss = forecast(law, x, center=center, runs=runs)
    if not 0 < level < 1:
        raise LawError(f"an interval level must lie strictly between 0 and 1, got {level!r}")
    n = len(x)
    log_c = np.log(forecast_loss)
    lower = np.full(n, np.inf)
    upper = np.full(n, -np.inf)
    used = np.array([""] * n, dtype=object)
    matched, tokens_max = runs.matched, runs.tokens_max
    span = runs.span if runs.span is not None else np.full(n, MIN_LOG_SPAN)
    with np.errstate(divide="ignore"):
        beyond_run = np.log(np.maximum(x.tokens / np.maximum(tokens_max, 1), 1)) / span
        d_run = np.where(matched, beyond_run, 0)
    wants: dict[str, tuple[BoolArray, FloatArray]] = {
        "seen": (matched & (d_run <= 0), np.zeros(n)),
        "runs": (~matched, np.zeros(n)),
    }
    t_lo, t_hi = calibration.tokens_range
    d_tok = _beyond(x.tokens, t_lo, t_hi) / log_span(np.array([t_lo]), np.array([t_hi]))[0]
    d_n0 = _beyond(x.n0, *calibration.n0_range)
    rho_lo, rho_hi = calibration.rho_range
    d_rho = _beyond(x.rho, rho_lo - RHO_TOLERANCE, rho_hi + RHO_TOLERANCE)
    wants["D"] = (
        (matched & (d_run > 0)) | (~matched & (d_tok > 0)),
        np.where(matched, d_run, d_tok),
    )
    wants["N0"] = (~matched & (d_n0 > 0), d_n0)
    wants["rho"] = (~matched & (d_rho > 0), d_rho)
    notes: list[str] = []
    for kind, (mask, distance) in wants.items():
        if not np.any(mask):
            continue
        bins = calibration.pools.get(kind)
        if not bins:
            fallback = "runs" if "runs" in calibration.pools else "seen"
            bins = calibration.pools.get(fallback)
            notes.append(
                f"{int(mask.sum())} point(s) need the {kind} residual pool, which this fit's "
                f"data could not measure; the {fallback} pool is used and coverage there is not "
                "measured"
            )
            if not bins:
                continue
        reach = max(b.distance for b in bins)
        past = int(np.count_nonzero(distance[mask] > reach * (1 + 1e-9))) if kind in _FAR else 0
        if past:
            notes.append(
                f"{past} point(s) lie further beyond the fitted {_FAR[kind]} than any hold-out "
                f"of the fit's data reached (log distance {reach:.3g}): their interval assumes "
                "the error grows linearly with the distance, and its coverage is not measured"
            )
        med, q_lo, q_hi = _pool_quantiles(bins, distance[mask], level)
        spread_lo = np.maximum(med - q_lo, 0.0)
        spread_hi = np.maximum(q_hi - med, 0.0)
        lo = log_c[mask] + med - spread_lo
        hi = log_c[mask] + med + spread_hi
        wider = (lo < lower[mask]) | (hi > upper[mask])
        lower[mask] = np.minimum(lower[mask], lo)
        upper[mask] = np.maximum(upper[mask], hi)
        idx = np.flatnonzero(mask)[wider]
        used[idx] = kind
    # A point beyond the fitted N0 or ρ also rests on the fitted dependence on them, which the
    # nested pools (measured one level further in, from one level fewer) understate: its
    # interval is at least the fit's own spread there, from the whole-run refits.
    far = ~matched & ((d_n0 > 0) | (d_rho > 0))
    if np.any(far) and len(calibration.folds) >= 2:
        half = NormalDist().inv_cdf((1 + level) / 2) * fold_spread(law, x.take(far))
        lo, hi = log_c[far] - half, log_c[far] + half
        wider = (lo < lower[far]) | (hi > upper[far])
        lower[far] = np.minimum(lower[far], lo)
        upper[far] = np.maximum(upper[far], hi)
        used[np.flatnonzero(far)[wider]] = "refits"
    if np.any(~np.isfinite(lower)):
        raise LawError("no residual pool describes some points: the fit has no calibration")
    return Band(
        lower=np.exp(lower),
        upper=np.exp(upper),
        pools=tuple(str(u) for u in used),
        notes=tuple(notes),
    )


def interval(
    law: FittedLaw,
    x: Features,
    *,
    level: float,
    kind: IntervalKind = "prediction",
    center: FloatArray | None = None,
    runs: Continued | None = None,
) -> Band:
    """The interval of `kind` at `level` for points `x` (see the module docstring).

    A caller that already has them may pass `center`, the law's own predictions at `x`, and
    `runs`, `continued(law.calibration, x)`; they are computed otherwise. The confidence kind
    evaluates the refits through the law's `refit_thetas`.
    Points that continue a fitted run are anchored to its level (`forecast`), band and all.
    The prediction interval does not use the refits: each pool's residuals come from refits
    without the runs they measure, so they hold the constants' uncertainty already (adding the
    bootstrap band on top over-covered continued runs of a known law: 97% at 80%).
    """
    runs = runs if runs is not None else continued(law.calibration, x)
    if kind == "confidence":
        if not law.refits:
            raise LawError("a confidence interval needs bootstrap refits")
        lower, upper = predict_interval(
            law.form.name, law.refits, x, level, thetas=law.refit_thetas
        )
        shift = runs.shift
        if np.any(shift != 0):
            lower, upper = anchor(lower, x.l0, shift), anchor(upper, x.l0, shift)
        return Band(lower=lower, upper=upper, pools=("bootstrap",) * len(x))
    return prediction_band(law, x, level, center=center, runs=runs)


# --------------------------------------------------------------------------- coverage


def measure_coverage(
    form: str,
    data: Dataset,
    protocols: Sequence[HoldOut] = ("D", "N0", "rho"),
    *,
    level: float = 0.8,
    bootstrap: int = 30,
    seed: int = 0,
) -> tuple[Coverage, ...]:
    """Coverage of the intervals on each protocol the data allow (docs/law.md §6).

    For each protocol: fit on its train side, refit `bootstrap` times by run, calibrate on the
    train side only, and count the held-out points inside the prediction (and confidence)
    interval at `level`. Protocols whose split or fit is impossible are left out.
    """
    out = []
    for protocol in protocols:
        try:
            out.append(
                check_protocol(form, data, protocol, level=level, bootstrap=bootstrap, seed=seed)
            )
        except LawError:
            continue
    return tuple(out)


def check_protocol(
    form: str,
    data: Dataset,
    protocol: HoldOut,
    *,
    level: float = 0.8,
    bootstrap: int = 30,
    seed: int = 0,
) -> Coverage:
    """One protocol of `measure_coverage`, with the law's held-out MAPE (in percent) beside
    the coverage; LawError when the split or the fit is impossible."""
    if isinstance(get_form(form), CurveForm) and protocol != "D":
        raise LawError("the curve form predicts only the runs it was fitted on (D protocol)")
    mask_train, mask_test = split(data, protocol)
    train, test = data.take(mask_train), data.take(mask_test)
    result = fit_law(form, train)
    refits = refit_runs(form, train, result, bootstrap, seed=seed) if bootstrap else []
    law = FittedLaw(get_form(form), result.params, tuple(refits), calibrate(form, train, result))
    band = interval(law, test.x, level=level)
    conf_cov = None
    if refits:
        conf = interval(law, test.x, level=level, kind="confidence")
        conf_cov = float(np.mean((test.loss >= conf.lower) & (test.loss <= conf.upper)))
    inside = (test.loss >= band.lower) & (test.loss <= band.upper)
    pools: dict[str, int] = {}
    for p in band.pools:
        pools[p] = pools.get(p, 0) + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        width = float(np.mean(np.log(band.upper / band.lower)))
    return Coverage(
        protocol=protocol,
        level=level,
        prediction=float(np.mean(inside)),
        confidence=conf_cov,
        points=len(test),
        runs=int(np.unique(test.run).size),
        pools=pools,
        mean_width=width,
        mape=evaluate(form, result.params, test).mape,
    )


#: Bootstrap refits behind each protocol's confidence-interval coverage (the prediction
#: interval needs none): 30 place its percentiles well enough for a coverage count, at a third
#: of the cost of 100.
COVERAGE_REFITS = 30


def calibrate_and_measure(
    form: str, data: Dataset, result: FitResult, *, level: float, seed: int = 0
) -> Calibration:
    """`calibrate`, with the intervals' coverage at `level` measured on every protocol the data
    allow (`measure_coverage`): what a fit with a bootstrap stores, from the API or the CLI."""
    measured = measure_coverage(form, data, level=level, bootstrap=COVERAGE_REFITS, seed=seed)
    return replace(calibrate(form, data, result), coverage=measured)
