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
residual's *distance* (log of how far beyond the data its fit saw: tokens, N0 or ρ), grouped in
bins; a query takes the bin nearest its own distance and scales the residuals up (never down)
linearly when it lies further than the bin. The interval is the pool's weighted quantiles around
their median, widened by the bootstrap band in quadrature, on a log scale. The assumption is
that runs are exchangeable: a new run relates to the fitted ones as the held-out runs did to the
rest. Outside the fitted ranges this is an assumption about extrapolation, and predictions say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from app.law.bootstrap import predict_interval, refit_runs
from app.law.errors import LawError, NotEnoughData
from app.law.fitting import fit as fit_law
from app.law.fitting import optimise
from app.law.forms import CurveForm, Form, get_form
from app.law.metrics import RHO_TOLERANCE, split
from app.law.types import Dataset, Features, FitResult, FloatArray, Params, Protocol

BoolArray = npt.NDArray[np.bool_]
IntervalKind = Literal["prediction", "confidence"]
PoolKind = Literal["seen", "runs", "D", "N0", "rho"]
POOL_KINDS: tuple[PoolKind, ...] = ("seen", "runs", "D", "N0", "rho")

#: Whole-run folds for the ``runs`` pool (fewer when there are fewer runs).
RUN_FOLDS = 10
#: Groups of runs cut in turn for the ``D`` pool, and where they are cut (share of checkpoints).
D_GROUPS = 5
D_CUTS = (0.3, 0.5, 0.8)
#: A distance bin holds residuals worth at least this many runs (or the whole pool).
MIN_RUNS_PER_BIN = 3.0
#: Calibration fits refit warm from the point estimate, like bootstrap refits.
CALIBRATION_FTOL = 1e-8
EXTRAPOLATION_GRID = True
# Relative tolerance when matching a query point's (n0, ρ, L0) to a fitted run.
_MATCH_RTOL = 1e-6


@dataclass(frozen=True)
class Bin:
    """Residuals at about one distance: sorted, with weights, and the bin's typical distance."""

    distance: float
    residuals: FloatArray
    weights: FloatArray

    def quantiles(self, probs: Sequence[float]) -> FloatArray:
        """Weighted quantiles (midpoint rule, linear between residuals)."""
        total = float(np.sum(self.weights))
        positions = (np.cumsum(self.weights) - self.weights / 2.0) / total
        return np.interp(np.asarray(probs, dtype=np.float64), positions, self.residuals)

    def as_dict(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "residuals": [float(v) for v in self.residuals],
            "weights": [float(v) for v in self.weights],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Bin:
        return cls(
            distance=float(raw["distance"]),
            residuals=np.asarray(raw["residuals"], dtype=np.float64),
            weights=np.asarray(raw["weights"], dtype=np.float64),
        )


def make_bins(residuals: FloatArray, weights: FloatArray, distances: FloatArray) -> list[Bin]:
    """Residuals grouped by distance into bins worth ≥ MIN_RUNS_PER_BIN runs each.

    Weights count runs (a run's points sum to one); a bin closes once it holds the threshold
    and what remains holds it too, so the last bin is never lighter than the threshold.
    """
    keep = np.isfinite(residuals) & np.isfinite(distances) & (weights > 0)
    residuals, weights, distances = residuals[keep], weights[keep], distances[keep]
    if residuals.size == 0:
        return []
    order = np.argsort(distances, kind="stable")
    groups: list[npt.NDArray[np.intp]] = []
    start = 0
    acc = 0.0
    for i, j in enumerate(order):
        acc += float(weights[j])
        if acc >= MIN_RUNS_PER_BIN and residuals.size - (i + 1) > 0:
            rest = float(np.sum(weights[order[i + 1 :]]))
            if rest >= MIN_RUNS_PER_BIN:
                groups.append(order[start : i + 1])
                start, acc = i + 1, 0.0
    groups.append(order[start:])
    out = []
    for idx in groups:
        r, w, d = residuals[idx], weights[idx], distances[idx]
        by_value = np.argsort(r, kind="stable")
        center = float(np.average(d, weights=w))
        out.append(Bin(distance=center, residuals=r[by_value], weights=w[by_value]))
    return out


@dataclass(frozen=True)
class RunKey:
    """What identifies a fitted run to a query point, and how far in tokens it was seen."""

    n0: float
    rho: float
    l0: float
    tokens_max: float


@dataclass(frozen=True)
class Coverage:
    """Measured share of one protocol's held-out points inside the intervals at `level`."""

    protocol: Protocol
    level: float
    prediction: float
    confidence: float | None
    points: int
    runs: int
    pools: dict[str, int] = field(default_factory=dict)
    mean_width: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "level": self.level,
            "prediction": self.prediction,
            "confidence": self.confidence,
            "points": self.points,
            "runs": self.runs,
            "pools": dict(self.pools),
            "mean_width": self.mean_width,
        }


@dataclass(frozen=True)
class Calibration:
    """Residual pools of one fit, the runs it saw and the coverage measured on its data."""

    pools: dict[str, list[Bin]]
    runs: tuple[RunKey, ...]
    n0_range: tuple[float, float]
    rho_range: tuple[float, float]
    tokens_range: tuple[float, float]
    coverage: tuple[Coverage, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "out-of-sample residual pools + bootstrap in quadrature (docs/law.md §4)",
            "pools": {k: [b.as_dict() for b in bins] for k, bins in self.pools.items()},
            "runs": [[r.n0, r.rho, r.l0, r.tokens_max] for r in self.runs],
            "n0_range": list(self.n0_range),
            "rho_range": list(self.rho_range),
            "tokens_range": list(self.tokens_range),
            "coverage": [c.as_dict() for c in self.coverage],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Calibration:
        return cls(
            pools={k: [Bin.from_dict(b) for b in bins] for k, bins in raw["pools"].items()},
            runs=tuple(RunKey(*(float(v) for v in r)) for r in raw["runs"]),
            n0_range=(float(raw["n0_range"][0]), float(raw["n0_range"][1])),
            rho_range=(float(raw["rho_range"][0]), float(raw["rho_range"][1])),
            tokens_range=(float(raw["tokens_range"][0]), float(raw["tokens_range"][1])),
            coverage=tuple(
                Coverage(
                    protocol=c["protocol"],
                    level=float(c["level"]),
                    prediction=float(c["prediction"]),
                    confidence=None if c["confidence"] is None else float(c["confidence"]),
                    points=int(c["points"]),
                    runs=int(c["runs"]),
                    pools={str(k): int(v) for k, v in c.get("pools", {}).items()},
                    mean_width=float(c.get("mean_width", 0.0)),
                )
                for c in raw.get("coverage", [])
            ),
            notes=tuple(str(n) for n in raw.get("notes", [])),
        )


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


def _log_residual(law: Form, params: Params, test: Dataset) -> FloatArray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predicted = law.predict_data(params, test)
        return np.asarray(np.log(test.loss) - np.log(predicted), dtype=np.float64)


@dataclass
class _Collected:
    residuals: list[FloatArray] = field(default_factory=list)
    weights: list[FloatArray] = field(default_factory=list)
    distances: list[FloatArray] = field(default_factory=list)

    def add(self, residual: FloatArray, test: Dataset, distance: FloatArray) -> None:
        self.residuals.append(residual)
        self.weights.append(_run_weights(test))
        self.distances.append(distance)

    def bins(self) -> list[Bin]:
        if not self.residuals:
            return []
        return make_bins(
            np.concatenate(self.residuals),
            np.concatenate(self.weights),
            np.concatenate(self.distances),
        )


def _family_of(data: Dataset) -> npt.NDArray[np.object_]:
    return np.array(data.family if data.family else ("",) * len(data), dtype=object)


def _levels(values: FloatArray, *, tol: float, log: bool) -> FloatArray:
    """Distinct levels of a variable (values within `tol` of the previous level merge)."""
    scale = np.log(values) if log else values
    levels: list[float] = []
    for v in np.sort(np.unique(scale)):
        if not levels or v - levels[-1] > tol:
            levels.append(float(v))
    return np.exp(levels) if log else np.asarray(levels)


def _runs_pool(law: Form, data: Dataset, params: Params) -> _Collected:
    out = _Collected()
    runs = np.unique(data.run)
    k = min(RUN_FOLDS, runs.size)
    if k < 2:
        return out
    order = np.random.default_rng(0).permutation(runs)
    for fold in range(k):
        held = order[fold::k]
        test_mask = np.isin(data.run, held)
        train, test = data.take(~test_mask), data.take(test_mask)
        try:
            refit = _refit(law, train, params, grid=False)
        except LawError:
            continue
        out.add(_log_residual(law, refit, test), test, np.zeros(len(test)))
    return out


def _cut_runs(data: Dataset, held: FloatArray, share: float) -> tuple[BoolArray, FloatArray]:
    """Mask of the points kept when runs `held` keep only their first `share` of checkpoints,
    and each point's log distance beyond the last kept tokens of its run (0 when kept)."""
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
        last = data.x.tokens[idx[n_keep - 1]]
        distance[idx[n_keep:]] = np.log(data.x.tokens[idx[n_keep:]] / last)
    return keep, distance


def _d_pool(law: Form, data: Dataset, params: Params) -> _Collected:
    out = _Collected()
    runs = np.unique(data.run)
    groups = min(D_GROUPS, runs.size)
    order = np.random.default_rng(1).permutation(runs)
    for share in D_CUTS:
        for g in range(groups):
            held = order[g::groups]
            keep, distance = _cut_runs(data, held, share)
            if np.all(keep):
                continue
            train, test = data.take(keep), data.take(~keep)
            try:
                refit = _refit(law, train, params, grid=False)
            except LawError:
                continue
            out.add(_log_residual(law, refit, test), test, distance[~keep])
    return out


def _extrapolation_pool(
    law: Form, data: Dataset, params: Params, variable: Literal["n0", "rho"]
) -> _Collected:
    """Leave out the top 1, 2, … levels of `variable` (per family for N0), keeping ≥ 2 levels
    (≥ 1 when there are only two), and predict them from the rest."""
    out = _Collected()
    values = getattr(data.x, variable)
    families = _family_of(data)
    if variable == "n0":
        per_family = {
            fam: _levels(values[families == fam], tol=1e-9, log=True) for fam in np.unique(families)
        }
        n_levels = max(len(v) for v in per_family.values())
    else:
        levels = _levels(values, tol=RHO_TOLERANCE, log=False)
        n_levels = len(levels)
    if n_levels < 2:
        return out
    for k in range(1, max(2, n_levels - 1)):
        if variable == "n0":
            test_mask = np.zeros(len(data), dtype=bool)
            top = np.zeros(len(data))
            for fam, lv in per_family.items():
                if len(lv) <= k:
                    continue
                mine = families == fam
                cut = lv[-k - 1]
                test_mask |= mine & (values > cut * (1 + 1e-9))
                top[mine] = cut
        else:
            cut = levels[-k - 1]
            test_mask = values > cut + RHO_TOLERANCE
            top = np.full(len(data), np.max(values[~test_mask]) if np.any(~test_mask) else 1.0)
        if not np.any(test_mask) or np.all(test_mask):
            continue
        train, test = data.take(~test_mask), data.take(test_mask)
        try:
            refit = _refit(law, train, params, grid=EXTRAPOLATION_GRID)
        except LawError:
            continue
        distance = np.log(values[test_mask] / top[test_mask])
        out.add(_log_residual(law, refit, test), test, distance)
    return out


def run_keys(data: Dataset) -> tuple[RunKey, ...]:
    """Each run's (n0, ρ, L0) and the largest tokens seen, in run order."""
    keys = []
    for r in np.unique(data.run):
        mine = data.run == r
        keys.append(
            RunKey(
                n0=float(np.median(data.x.n0[mine])),
                rho=float(np.median(data.x.rho[mine])),
                l0=float(np.median(data.x.l0[mine])),
                tokens_max=float(np.max(data.x.tokens[mine])),
            )
        )
    return tuple(keys)


def calibrate(form: str, data: Dataset, result: FitResult) -> Calibration:
    """The residual pools of `result` (a fit of `form` to `data`), measured on `data`."""
    law = get_form(form)
    params = result.params
    seen = _Collected()
    seen.add(_log_residual(law, params, data), data, np.zeros(len(data)))
    pools: dict[str, list[Bin]] = {"seen": seen.bins(), "D": _d_pool(law, data, params).bins()}
    notes: list[str] = []
    if isinstance(law, CurveForm):
        notes.append("the curve form has one law per run: intervals only for fitted runs")
    else:
        pools["runs"] = _runs_pool(law, data, params).bins()
        pools["N0"] = _extrapolation_pool(law, data, params, "n0").bins()
        pools["rho"] = _extrapolation_pool(law, data, params, "rho").bins()
    for kind in ("runs", "D", "N0", "rho"):
        if kind in pools and not pools[kind]:
            notes.append(f"no {kind} pool: the data allow no such hold-out")
    x = data.x
    return Calibration(
        pools={k: v for k, v in pools.items() if v},
        runs=run_keys(data),
        n0_range=(float(np.min(x.n0)), float(np.max(x.n0))),
        rho_range=(float(np.min(x.rho)), float(np.max(x.rho))),
        tokens_range=(float(np.min(x.tokens)), float(np.max(x.tokens))),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- intervals


def _pool_quantiles(
    bins: Sequence[Bin], distance: FloatArray, level: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Median, lower and upper residual quantile at each query distance."""
    lo_p, hi_p = (1 - level) / 2, (1 + level) / 2
    table = np.array([b.quantiles([0.5, lo_p, hi_p]) for b in bins])  # (bins, 3)
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


def _match(calibration: Calibration, x: Features) -> tuple[BoolArray, FloatArray]:
    """Whether each point belongs to a fitted run, and that run's largest tokens seen."""
    if not calibration.runs:
        return np.zeros(len(x), dtype=bool), np.zeros(len(x))
    keys = np.array([[r.n0, r.rho, r.l0] for r in calibration.runs])
    tmax = np.array([r.tokens_max for r in calibration.runs])
    points = np.stack([x.n0, x.rho, x.l0], axis=-1)
    close = np.all(
        np.isclose(points[:, None, :], keys[None, :, :], rtol=_MATCH_RTOL, atol=0.0), axis=-1
    )
    matched = np.any(close, axis=1)
    tokens_max = np.where(matched, np.max(np.where(close, tmax[None, :], 0.0), axis=1), 0.0)
    return matched, tokens_max


def _beyond(value: FloatArray, lo: float, hi: float) -> FloatArray:
    """Log distance outside [lo, hi] (0 inside)."""
    with np.errstate(divide="ignore"):
        above = np.log(np.maximum(value / hi, 1.0))
        below = np.log(np.maximum(lo / value, 1.0))
    return np.asarray(np.maximum(above, below), dtype=np.float64)


@dataclass(frozen=True)
class Band:
    """A prediction band and which pool set each point's width (for reports and warnings)."""

    lower: FloatArray
    upper: FloatArray
    pools: tuple[str, ...]
    notes: tuple[str, ...] = ()


def prediction_band(
    center: FloatArray,
    calibration: Calibration,
    x: Features,
    level: float,
    *,
    confidence: tuple[FloatArray, FloatArray] | None = None,
) -> Band:
    """The prediction interval at `level` around the predicted losses `center`.

    Each point takes every pool that describes it (a fitted run: ``seen`` inside its tokens,
    ``D`` beyond them; otherwise ``runs``, plus ``N0``/``rho``/``D`` for each variable outside
    the fitted ranges) and the widest of their intervals. `confidence` is the bootstrap band,
    added in quadrature on the log scale.
    """
    if not 0 < level < 1:
        raise LawError(f"an interval level must lie strictly between 0 and 1, got {level!r}")
    n = len(x)
    log_c = np.log(center)
    lo_b = np.zeros(n)
    hi_b = np.zeros(n)
    if confidence is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            lo_b = np.nan_to_num(np.maximum(log_c - np.log(confidence[0]), 0.0))
            hi_b = np.nan_to_num(np.maximum(np.log(confidence[1]) - log_c, 0.0))
    lower = np.full(n, np.inf)
    upper = np.full(n, -np.inf)
    used = np.array([""] * n, dtype=object)
    matched, tokens_max = _match(calibration, x)
    with np.errstate(divide="ignore"):
        d_run = np.where(matched, np.log(np.maximum(x.tokens / np.maximum(tokens_max, 1), 1)), 0)
    wants: dict[str, tuple[BoolArray, FloatArray]] = {
        "seen": (matched & (d_run <= 0), np.zeros(n)),
        "runs": (~matched, np.zeros(n)),
    }
    d_tok = _beyond(x.tokens, *calibration.tokens_range)
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
        med, q_lo, q_hi = _pool_quantiles(bins, distance[mask], level)
        spread_lo = np.maximum(med - q_lo, 0.0)
        spread_hi = np.maximum(q_hi - med, 0.0)
        lo = log_c[mask] + med - np.sqrt(spread_lo**2 + lo_b[mask] ** 2)
        hi = log_c[mask] + med + np.sqrt(spread_hi**2 + hi_b[mask] ** 2)
        wider = (lo < lower[mask]) | (hi > upper[mask])
        lower[mask] = np.minimum(lower[mask], lo)
        upper[mask] = np.maximum(upper[mask], hi)
        idx = np.flatnonzero(mask)[wider]
        used[idx] = kind
    if np.any(~np.isfinite(lower)):
        raise LawError("no residual pool describes some points: the fit has no calibration")
    return Band(
        lower=np.exp(lower),
        upper=np.exp(upper),
        pools=tuple(str(u) for u in used),
        notes=tuple(notes),
    )


def interval(
    form: str,
    params: Params,
    refits: Sequence[Mapping[str, float]],
    calibration: Calibration | None,
    x: Features,
    *,
    level: float,
    kind: IntervalKind = "prediction",
) -> Band:
    """The interval of `kind` at `level` for points `x` (see the module docstring)."""
    law = get_form(form)
    confidence = predict_interval(form, refits, x, level) if refits else None
    if kind == "confidence":
        if confidence is None:
            raise LawError("a confidence interval needs bootstrap refits")
        return Band(lower=confidence[0], upper=confidence[1], pools=("bootstrap",) * len(x))
    if calibration is None:
        raise LawError("a prediction interval needs the fit's calibration")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        center = law.predict(params, x)
    return prediction_band(center, calibration, x, level, confidence=confidence)


# --------------------------------------------------------------------------- coverage


def measure_coverage(
    form: str,
    data: Dataset,
    protocols: Sequence[Protocol] = ("D", "N0", "rho"),
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
    out: list[Coverage] = []
    law = get_form(form)
    for protocol in protocols:
        try:
            mask_train, mask_test = split(data, protocol)
        except LawError:
            continue
        train, test = data.take(mask_train), data.take(mask_test)
        if isinstance(law, CurveForm) and protocol != "D":
            continue
        try:
            result = fit_law(form, train)
            refits = refit_runs(form, train, result, bootstrap, seed=seed) if bootstrap else []
            cal = calibrate(form, train, result)
            band = interval(form, result.params, refits, cal, test.x, level=level)
            conf = (
                interval(form, result.params, refits, cal, test.x, level=level, kind="confidence")
                if refits
                else None
            )
        except LawError:
            continue
        inside = (test.loss >= band.lower) & (test.loss <= band.upper)
        conf_cov = None
        if conf is not None:
            conf_cov = float(np.mean((test.loss >= conf.lower) & (test.loss <= conf.upper)))
        pools: dict[str, int] = {}
        for p in band.pools:
            pools[p] = pools.get(p, 0) + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            width = float(np.mean(np.log(band.upper / band.lower)))
        out.append(
            Coverage(
                protocol=protocol,
                level=level,
                prediction=float(np.mean(inside)),
                confidence=conf_cov,
                points=len(test),
                runs=int(np.unique(test.run).size),
                pools=pools,
                mean_width=width,
            )
        )
    return tuple(out)
