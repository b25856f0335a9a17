"""Goodness of fit and the generalisation splits (docs/law.md §5 and §6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from app.law.errors import LawError, NotEnoughData
from app.law.forms import get_form
from app.law.objective import huber
from app.law.types import Dataset, FloatArray, HoldOut, IntArray, Metrics

BoolArray = npt.NDArray[np.bool_]

# §6: the share of each run's checkpoints (by D) that the D protocol fits on.
D_TRAIN_FRACTION = 0.8
# The paper's fixed ρ split (the ``rho-paper`` protocol): fit ρ ≈ 0.15/0.25, test ρ ≈ 0.35.
RHO_TRAIN = (0.15, 0.25)
RHO_TEST = 0.35
# A measured ρ is never exactly 0.25: it counts whole layers or channels. Values within this
# distance of a protocol value count as that value, and measured ρ closer than this to the next
# one are one level (`levels`).
RHO_TOLERANCE = 0.02
# Sizes within this relative distance of the next smaller one are one size (`levels`).
N0_LEVEL_RTOL = 0.05
#: Every hold-out protocol, in the order they are reported.
HOLD_OUTS: tuple[HoldOut, ...] = get_args(HoldOut)


def asd(tokens: FloatArray, observed: FloatArray, predicted: FloatArray, run: IntArray) -> float:
    """Average slope difference, our definition (docs/law.md §5).

    Within each run sorted by D (billions of tokens), slopes between consecutive checkpoints of
    the observed and of the predicted losses; the mean of |s_obs − s_pred| over all consecutive
    pairs of all runs. Pairs at the same D carry no slope and are skipped; with no pair at all
    the ASD is 0.0 (nothing to compare), so that a metric is never NaN.
    """
    d = np.asarray(tokens, dtype=np.float64) / 1e9
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    runs = np.asarray(run)
    order = np.lexsort((d, runs))
    d, obs, pred, runs = d[order], obs[order], pred[order], runs[order]
    dd = np.diff(d)
    ok = (runs[1:] == runs[:-1]) & (dd > 0)
    if not np.any(ok):
        return 0.0
    s_obs = np.diff(obs)[ok] / dd[ok]
    s_pred = np.diff(pred)[ok] / dd[ok]
    return float(np.mean(np.abs(s_obs - s_pred)))


def metrics_of(observed: FloatArray, predicted: FloatArray, data: Dataset) -> Metrics:
    """R², RMSE, MAPE (in percent), summed Huber on log residuals and ASD of a prediction."""
    residual = predicted - observed
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((observed - np.mean(observed)) ** 2))
    # One distinct observed value has no variance to explain: R² is 1 for a perfect fit, else 0.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return Metrics(
        r2=float(r2),
        rmse=float(np.sqrt(np.mean(residual**2))),
        mape=float(100.0 * np.mean(np.abs(residual) / np.abs(observed))),
        huber=float(np.sum(huber(np.log(predicted) - np.log(observed)))),
        asd=asd(data.x.tokens, observed, predicted, data.run),
    )


def evaluate(form: str, params: Mapping[str, float], data: Dataset) -> Metrics:
    """Metrics of a law on a dataset (docs/law.md §5); MAPE is in percent."""
    if len(data) == 0:
        raise NotEnoughData("no observations to evaluate the law on")
    predicted = get_form(form).predict_data(params, data)
    return metrics_of(data.loss, predicted, data)


def _nearest(values: FloatArray, targets: tuple[float, ...]) -> tuple[IntArray, BoolArray]:
    """Index of the nearest target for each value, and whether it is within RHO_TOLERANCE."""
    grid = np.asarray(targets)
    dist = np.abs(values[:, None] - grid[None, :])
    return np.argmin(dist, axis=1), np.min(dist, axis=1) <= RHO_TOLERANCE


def _cluster(values: FloatArray, gap: float) -> IntArray:
    """Level of each value: sorted values open a new level where the step from the previous
    value exceeds `gap` (0 is the lowest level)."""
    order = np.argsort(values, kind="stable")
    steps = np.diff(values[order]) > gap
    level = np.empty(values.size, dtype=np.int64)
    level[order] = np.concatenate([[0], np.cumsum(steps)]) if values.size else []
    return level


def _families(data: Dataset) -> npt.NDArray[np.object_]:
    return np.array(data.family if data.family else ("",) * len(data), dtype=object)


def levels(data: Dataset, variable: Literal["n0", "rho"]) -> IntArray:
    """The level of each point in `variable`, as the N0 and ρ protocols find them (§6).

    - ``rho``: measured ρ clustered over the whole dataset: sorted, a step larger than
      RHO_TOLERANCE (0.02) opens a new level (one target's measured ρ scatters by ~0.01–0.02);
    - ``n0``: per family, sizes within N0_LEVEL_RTOL (5%) of the previous size are one size.
    Levels count from 0 (the lowest) within a family (n0) or the dataset (ρ).
    """
    if variable == "rho":
        return _cluster(np.asarray(data.x.rho, dtype=np.float64), RHO_TOLERANCE)
    out = np.zeros(len(data), dtype=np.int64)
    families = _families(data)
    for fam in np.unique(families):
        mine = families == fam
        out[mine] = _cluster(np.log(data.x.n0[mine]), float(np.log1p(N0_LEVEL_RTOL)))
    return out


def top_level(data: Dataset, variable: Literal["n0", "rho"], k: int = 1) -> BoolArray:
    """The points in the top `k` levels of `variable` (per family for n0); a family (n0) or a
    dataset (ρ) with no more than `k` levels holds nothing out."""
    level = levels(data, variable)
    out = np.zeros(len(data), dtype=bool)
    groups = _families(data) if variable == "n0" else np.zeros(len(data), dtype=object)
    for g in np.unique(groups):
        mine = groups == g
        n_levels = int(np.max(level[mine])) + 1
        if n_levels > k:
            out |= mine & (level >= n_levels - k)
    return out


def split(data: Dataset, protocol: HoldOut) -> tuple[BoolArray, BoolArray]:
    """Train and test masks of a generalisation protocol (docs/law.md §6), defined by the data.

    - ``D``: the first 80% of each run's checkpoints by D (at least one) fit, the rest test;
    - ``N0``: per family, the largest size present is the test side, smaller sizes fit (sizes
      within 5% are one size, `levels`);
    - ``rho``: the highest ρ level present is the test side, every lower level fits (levels
      found by clustering the measured ρ, `levels`);
    - ``rho-paper``: the paper's fixed split: ρ ≈ 0.15 or 0.25 fit, ρ ≈ 0.35 test (within
      0.02); other ρ are in neither. On the paper's grid ``rho`` gives the same split.
    NotEnoughData when a side is empty (the data has a single level).
    """
    n = len(data)
    train = np.zeros(n, dtype=bool)
    test = np.zeros(n, dtype=bool)
    if protocol == "D":
        for r in np.unique(data.run):
            idx = np.flatnonzero(data.run == r)
            idx = idx[np.argsort(data.x.tokens[idx], kind="stable")]
            n_train = max(1, int(np.floor(D_TRAIN_FRACTION * len(idx) + 1e-9)))
            train[idx[:n_train]] = True
            test[idx[n_train:]] = True
        hint = "runs need ≥ 2 checkpoints"
    elif protocol in ("N0", "rho"):
        variable: Literal["n0", "rho"] = "n0" if protocol == "N0" else "rho"
        test = top_level(data, variable)
        train = ~test
        if protocol == "N0":
            # A family with one size has nothing to extrapolate to: it is in neither side.
            families = _families(data)
            for fam in np.unique(families):
                mine = families == fam
                if not np.any(test & mine):
                    train &= ~mine
        hint = (
            "a family needs ≥ 2 sizes; sizes within 5% are one"
            if protocol == "N0"
            else "≥ 2 levels of ρ are needed; measured ρ within 0.02 of each other are one level"
        )
    elif protocol == "rho-paper":
        targets = (*RHO_TRAIN, RHO_TEST)
        which, near = _nearest(data.x.rho, targets)
        train = near & (which < len(RHO_TRAIN))
        test = near & (which == len(RHO_TRAIN))
        hint = "points near 0.15/0.25 and near 0.35 are needed"
    else:
        raise LawError(f"unknown hold-out protocol {protocol!r}; use one of {', '.join(HOLD_OUTS)}")
    if not np.any(train) or not np.any(test):
        side = "held-out" if not np.any(test) else "fit"
        raise NotEnoughData(
            f"the {protocol} protocol leaves the {side} side empty on these {n} observations "
            f"({hint})"
        )
    return train, test
