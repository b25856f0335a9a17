"""Goodness of fit and the generalisation splits (docs/law.md §5 and §6)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from app.law.errors import LawError, NotEnoughData
from app.law.forms import get_form
from app.law.objective import huber
from app.law.types import Dataset, FloatArray, HoldOut, IntArray, Metrics

BoolArray = npt.NDArray[np.bool_]

# §6: the share of each run's checkpoints (by D) that the D protocol fits on.
D_TRAIN_FRACTION = 0.8
RHO_TRAIN = (0.15, 0.25)
RHO_TEST = 0.35
# A measured ρ is never exactly 0.25: it counts whole layers or channels. Values within this
# distance of a protocol value count as that value.
RHO_TOLERANCE = 0.02


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


def split(data: Dataset, protocol: HoldOut) -> tuple[BoolArray, BoolArray]:
    """Train and test masks of a generalisation protocol (docs/law.md §6).

    - ``D``: the first 80% of each run's checkpoints by D (at least one) fit, the rest test;
    - ``N0``: per family, the largest n0 is the test side, smaller sizes fit;
    - ``rho``: ρ ≈ 0.15 or 0.25 fit, ρ ≈ 0.35 test (within 0.02); other ρ are in neither.
    NotEnoughData when a side is empty.
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
    elif protocol == "N0":
        families = np.array(data.family if data.family else ("",) * n, dtype=object)
        for fam in np.unique(families):
            mine = families == fam
            largest = np.max(data.x.n0[mine])
            is_largest = mine & np.isclose(data.x.n0, largest, rtol=1e-9, atol=0.0)
            test |= is_largest
            train |= mine & ~is_largest
    elif protocol == "rho":
        targets = (*RHO_TRAIN, RHO_TEST)
        which, near = _nearest(data.x.rho, targets)
        train = near & (which < len(RHO_TRAIN))
        test = near & (which == len(RHO_TRAIN))
    else:
        raise LawError(f"unknown hold-out protocol {protocol!r}; use D, N0 or rho")
    if not np.any(train) or not np.any(test):
        side = "fit" if not np.any(train) else "held-out"
        raise NotEnoughData(
            f"the {protocol} protocol leaves the {side} side empty on these "
            f"{n} observations (D: runs need ≥ 2 checkpoints; N0: a family needs ≥ 2 sizes; "
            f"rho: points near 0.15/0.25 and near 0.35 are needed)"
        )
    return train, test
