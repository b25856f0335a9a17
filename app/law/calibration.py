"""What a fit's calibration keeps: the held-out residual pools by distance (bins), the fitted
runs' keys, and the coverage measured on each protocol (docs/law.md §4).

Values only, serialised with the fit; ``app.law.intervals`` makes them and reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from app.law.types import FloatArray, HoldOut

#: A distance bin holds residuals worth at least this many runs (or the whole pool).
MIN_RUNS_PER_BIN = 3.0
#: A bin of one draw per held-out run (`make_bins` with `draws`) holds at least this many:
#: the fewest n whose conformal 80% interval lies inside the draws' range, (n − 1)/(n + 1) ≥ 0.8.
MIN_DRAWS_PER_BIN = 9.0
#: A run seen over less than a doubling of its tokens counts as seen over a doubling, when its
#: extrapolation distance is measured in units of the log span it was seen over.
MIN_LOG_SPAN = float(np.log(2.0))


def conformal(draws: FloatArray, p: float) -> float:
    """The conformal quantile ``p`` (≠ ½) of ``draws`` sorted ascending: the draw of rank
    ⌊(n+1)·p⌋ for p < ½, ⌈(n+1)·p⌉ for p > ½, the extremes where n is too small for the rank.
    A new draw lies between ranks i and j of n exchangeable ones with probability
    (j − i)/(n + 1)."""
    n = draws.size
    # (ranks are whole numbers up to rounding: 10 · 0.1 is not exactly 1 in floats)
    rank = np.floor((n + 1) * p + 1e-9) if p < 0.5 else np.ceil((n + 1) * p - 1e-9)
    return float(draws[min(max(int(rank), 1), n) - 1])


@dataclass(frozen=True)
class Bin:
    """Residuals at about one distance: sorted, with weights, and the bin's typical distance."""

    distance: float
    residuals: FloatArray
    weights: FloatArray
    #: One draw per held-out run, read at conformal ranks (`quantiles`).
    conformal: bool = False

    def quantiles(self, probs: Sequence[float]) -> FloatArray:
        """Weighted quantiles (midpoint rule, linear between residuals); for a conformal bin of
        n draws, the median and, for p ≠ ½, the draw of rank ⌊(n+1)·p⌋ (p < ½) or ⌈(n+1)·p⌉
        (p > ½), the extremes where n is too small for the rank: a new run's residual is one
        more draw, so n draws cover it between ranks i and j with probability (j − i)/(n + 1)."""
        if self.conformal:
            return np.asarray(
                [
                    float(np.median(self.residuals)) if p == 0.5 else conformal(self.residuals, p)
                    for p in probs
                ],
                dtype=np.float64,
            )
        total = float(np.sum(self.weights))
        positions = (np.cumsum(self.weights) - self.weights / 2.0) / total
        return np.interp(np.asarray(probs, dtype=np.float64), positions, self.residuals)

    def as_dict(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "residuals": [float(v) for v in self.residuals],
            "weights": [float(v) for v in self.weights],
            "conformal": self.conformal,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Bin:
        return cls(
            distance=float(raw["distance"]),
            residuals=np.asarray(raw["residuals"], dtype=np.float64),
            weights=np.asarray(raw["weights"], dtype=np.float64),
            conformal=bool(raw.get("conformal", False)),
        )


def make_bins(
    residuals: FloatArray,
    weights: FloatArray,
    distances: FloatArray,
    draws: npt.NDArray[np.int64] | None = None,
) -> list[Bin]:
    """Residuals grouped by distance into bins worth ≥ MIN_RUNS_PER_BIN runs each.

    Weights count runs (a run's points sum to one); a bin closes once it holds the threshold
    and what remains holds it too, so the last bin is never lighter than the threshold.

    With `draws` (which held-out run each residual belongs to), a bin holds
    MIN_DRAWS_PER_BIN draws and keeps one residual per draw, the one nearest the bin's
    distance: a run's checkpoints share its departure and are not more draws, so the bin is
    read at conformal ranks (`Bin.quantiles`).
    """
    keep = np.isfinite(residuals) & np.isfinite(distances) & (weights > 0)
    residuals, weights, distances = residuals[keep], weights[keep], distances[keep]
    if draws is not None:
        draws = draws[keep]
    threshold = MIN_RUNS_PER_BIN if draws is None else MIN_DRAWS_PER_BIN
    if residuals.size == 0:
        return []
    order = np.argsort(distances, kind="stable")
    # With draws: the draws among the residuals from each position on (for the last bin).
    draws_after = np.zeros(order.size)
    if draws is not None:
        found: set[int] = set()
        for i in range(order.size - 1, -1, -1):
            found.add(int(draws[order[i]]))
            draws_after[i] = len(found)
    groups: list[npt.NDArray[np.intp]] = []
    start = 0
    acc = 0.0
    in_bin: set[int] = set()
    for i, j in enumerate(order):
        if draws is None:
            acc += float(weights[j])
        else:
            in_bin.add(int(draws[j]))
            acc = float(len(in_bin))
        same_as_next = i + 1 < order.size and distances[order[i + 1]] == distances[j]
        if acc >= threshold and residuals.size - (i + 1) > 0 and not same_as_next:
            rest = (
                float(np.sum(weights[order[i + 1 :]]))
                if draws is None
                else float(draws_after[i + 1])
            )
            if rest >= threshold:
                groups.append(order[start : i + 1])
                start, acc = i + 1, 0.0
                in_bin = set()
    groups.append(order[start:])
    out = []
    for idx in groups:
        r, w, d = residuals[idx], weights[idx], distances[idx]
        center = float(np.average(d, weights=w))
        if draws is not None:
            picked = []
            for g in np.unique(draws[idx]):
                mine = np.flatnonzero(draws[idx] == g)
                picked.append(mine[np.argmin(np.abs(d[mine] - center))])
            r, w = r[picked], np.ones(len(picked))
        by_value = np.argsort(r, kind="stable")
        out.append(
            Bin(
                distance=center,
                residuals=r[by_value],
                weights=w[by_value],
                conformal=draws is not None,
            )
        )
    return out


@dataclass(frozen=True)
class RunKey:
    """What identifies a fitted run to a query point, how far in tokens it was seen, and its
    anchor: the log ratio of its observed to its predicted gap (L − L0) at its last
    checkpoints, which a continued run's forecast keeps (see `anchor`)."""

    run_id: str
    n0: float
    rho: float
    l0: float
    tokens_max: float
    anchor: float = 0.0
    tokens_min: float | None = None  # None: as tokens_max (a run seen at one point)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "n0": self.n0,
            "rho": self.rho,
            "l0": self.l0,
            "tokens_min": self.tokens_min if self.tokens_min is not None else self.tokens_max,
            "tokens_max": self.tokens_max,
            "anchor": self.anchor,
        }


@dataclass(frozen=True)
class Coverage:
    """Measured share of one protocol's held-out points inside the intervals at `level`."""

    protocol: HoldOut
    level: float
    prediction: float
    confidence: float | None
    points: int
    runs: int
    pools: dict[str, int] = field(default_factory=dict)
    mean_width: float = 0.0
    mape: float | None = None  # the law's held-out MAPE on this protocol, percent

    def as_dict(self) -> dict[str, Any]:
        return {
            "mape": self.mape,
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
    #: The law refitted without each group of whole runs (the ``runs`` pool's folds): how far
    #: their predictions at an extrapolated point spread is the uncertainty of the fitted
    #: dependence on N0 and ρ, which grows with the distance (docs/law.md §4).
    folds: tuple[dict[str, float], ...] = ()

    @cached_property
    def run_table(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """The runs as arrays, built once (every prediction matches its points against them):
        (n0, ρ, L0) keys of shape (runs, 3), log span of tokens seen, largest tokens seen and
        gap anchors."""
        keys = np.array([[r.n0, r.rho, r.l0] for r in self.runs], dtype=np.float64)
        tokens_max = np.array([r.tokens_max for r in self.runs], dtype=np.float64)
        tokens_min = np.array(
            [r.tokens_min if r.tokens_min is not None else r.tokens_max for r in self.runs],
            dtype=np.float64,
        )
        shifts = np.array([r.anchor for r in self.runs], dtype=np.float64)
        return keys.reshape(-1, 3), log_span(tokens_min, tokens_max), tokens_max, shifts

    @property
    def has_pools(self) -> bool:
        """Whether prediction intervals can be made (a fit without a bootstrap keeps only its
        runs, for anchoring)."""
        return bool(self.pools)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "out-of-sample residual pools per question (docs/law.md §4)",
            "pools": {k: [b.as_dict() for b in bins] for k, bins in self.pools.items()},
            "runs": [r.as_dict() for r in self.runs],
            "n0_range": list(self.n0_range),
            "rho_range": list(self.rho_range),
            "tokens_range": list(self.tokens_range),
            "coverage": [c.as_dict() for c in self.coverage],
            "notes": list(self.notes),
            "folds": [dict(f) for f in self.folds],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Calibration:
        return cls(
            pools={k: [Bin.from_dict(b) for b in bins] for k, bins in raw["pools"].items()},
            runs=tuple(
                RunKey(
                    run_id=str(r["run_id"]),
                    n0=float(r["n0"]),
                    rho=float(r["rho"]),
                    l0=float(r["l0"]),
                    tokens_max=float(r["tokens_max"]),
                    anchor=float(r["anchor"]),
                    tokens_min=float(r.get("tokens_min", r["tokens_max"])),
                )
                for r in raw["runs"]
            ),
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
                    mape=None if c.get("mape") is None else float(c["mape"]),
                )
                for c in raw.get("coverage", [])
            ),
            notes=tuple(str(n) for n in raw.get("notes", [])),
            folds=tuple({str(k): float(v) for k, v in f.items()} for f in raw.get("folds", [])),
        )


def log_span(first: FloatArray, last: FloatArray) -> FloatArray:
    """The log span of tokens a run was seen over, at least MIN_LOG_SPAN: how far it may be
    extrapolated is measured in these units (docs/law.md §4)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.log(np.maximum(last, 1.0) / np.maximum(first, 1.0))
    return np.asarray(np.maximum(np.nan_to_num(span), MIN_LOG_SPAN), dtype=np.float64)
