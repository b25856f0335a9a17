"""Plain data types of the law engine (numpy only).

Every array is float64 and every count is raw (parameters, tokens); the forms convert to their
own units (billions for `p2`, see docs/law.md §1). These types are what services hand to the law
and get back: they never mention the database or HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Params = Mapping[str, float]

Rule = Literal["marginal", "gap", "target"]
#: Which generalisation check holds data out (docs/law.md §6): not the evaluation-set
#: `protocol` every observation records (docs/law.md §3).
HoldOut = Literal["D", "N0", "rho", "rho-paper"]


@dataclass(frozen=True)
class Features:
    """The law's inputs, columnar, raw units: n0 in parameters, tokens in tokens."""

    n0: FloatArray
    rho: FloatArray
    l0: FloatArray
    tokens: FloatArray

    def __len__(self) -> int:
        return int(self.n0.shape[0])

    def take(self, index: npt.NDArray[np.bool_] | IntArray) -> Features:
        """The rows selected by a boolean mask or an index array."""
        return Features(self.n0[index], self.rho[index], self.l0[index], self.tokens[index])


_ROW_FIELDS = ("run_id", "n0", "rho", "l0", "tokens", "loss", "family", "method", "protocol")


def vars_of(row: object) -> dict[str, Any]:
    """The observation fields an object carries as attributes (absent ones left out)."""
    return {name: getattr(row, name) for name in _ROW_FIELDS if hasattr(row, name)}


@dataclass(frozen=True)
class Dataset:
    """Observed losses with their features and the run each point belongs to.

    `run` holds a small integer per point (0..n_runs-1); `run_ids` maps it back to names.
    `family` and `method` are per point so that ranges and the N0/ρ protocols can use them.
    """

    x: Features
    loss: FloatArray
    run: IntArray
    run_ids: tuple[str, ...]
    family: tuple[str, ...] = ()
    method: tuple[str, ...] = ()
    protocol: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @classmethod
    def from_rows(cls, rows: Iterable[Any]) -> Dataset:
        """Observation rows as a Dataset, runs numbered in order of first appearance.

        A row is a mapping or an object with ``run_id``, ``n0``, ``rho``, ``l0``, ``tokens`` and
        ``loss`` (raw counts), and optionally ``family``, ``method`` and ``protocol`` (kept per
        point only when every row has them): a stored observation, a CSV or JSON record, a
        synthetic row, a job's checkpoint. The one converter every caller uses.
        """
        records = [row if isinstance(row, Mapping) else vars_of(row) for row in rows]
        run_index: dict[str, int] = {}
        run = np.fromiter(
            (run_index.setdefault(str(r["run_id"]), len(run_index)) for r in records),
            dtype=np.int64,
            count=len(records),
        )

        def column(name: str) -> FloatArray:
            return np.fromiter((r[name] for r in records), dtype=np.float64, count=len(records))

        def labels(name: str) -> tuple[str, ...]:
            if not records or any(name not in r for r in records):
                return ()
            return tuple(str(r[name] or "") for r in records)

        return cls(
            x=Features(column("n0"), column("rho"), column("l0"), column("tokens")),
            loss=column("loss"),
            run=run,
            run_ids=tuple(run_index),
            family=labels("family"),
            method=labels("method"),
            protocol=labels("protocol"),
        )

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)

    def take(self, index: npt.NDArray[np.bool_] | IntArray) -> Dataset:
        """The points selected by a boolean mask or an index array (run ids kept whole)."""
        idx = np.arange(len(self))[index]

        def pick(values: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(values[i] for i in idx) if values else ()

        return Dataset(
            x=self.x.take(idx),
            loss=self.loss[idx],
            run=self.run[idx],
            run_ids=self.run_ids,
            family=pick(self.family),
            method=pick(self.method),
            protocol=pick(self.protocol),
        )


@dataclass(frozen=True)
class Metrics:
    """Goodness of fit (docs/law.md §5)."""

    r2: float
    rmse: float
    mape: float
    huber: float
    asd: float

    def as_dict(self) -> dict[str, float]:
        return {
            "r2": self.r2,
            "rmse": self.rmse,
            "mape": self.mape,
            "huber": self.huber,
            "asd": self.asd,
        }


@dataclass(frozen=True)
class Ranges:
    """The data a fit saw: a prediction outside it carries a warning."""

    n0: tuple[float, float]
    rho: tuple[float, float]
    l0: tuple[float, float]
    tokens: tuple[float, float]
    families: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "n0": list(self.n0),
            "rho": list(self.rho),
            "l0": list(self.l0),
            "tokens": list(self.tokens),
            "families": list(self.families),
            "methods": list(self.methods),
            "protocols": list(self.protocols),
        }


@dataclass(frozen=True)
class FitResult:
    """A fitted law: the optimiser's outcome, kept whole (lmfit-style) and JSON-serialisable."""

    form: str
    params: dict[str, float]
    objective: float
    converged: bool
    message: str
    n_starts: int
    n_observations: int
    n_runs: int
    metrics: Metrics
    ranges: Ranges
    holdout_metrics: Metrics | None = None
    bootstrap: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The fit as JSON-ready values (the bootstrap refits under ``refits``)."""
        return {
            "form": self.form,
            "params": dict(self.params),
            "objective": self.objective,
            "converged": self.converged,
            "message": self.message,
            "n_starts": self.n_starts,
            "n_observations": self.n_observations,
            "n_runs": self.n_runs,
            "metrics": self.metrics.as_dict(),
            "holdout_metrics": None
            if self.holdout_metrics is None
            else self.holdout_metrics.as_dict(),
            "ranges": self.ranges.as_dict(),
            "refits": list(self.bootstrap),
        }


@dataclass(frozen=True)
class Recommendation:
    """How many tokens a rule asks for, and what the law predicts there."""

    tokens: float
    predicted_loss: float
    floor_loss: float
    capped: bool
    tokens_interval: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    #: The answer ÷ the most tokens the fit observed (`app.law.ranges.beyond_observed`); None
    #: for a law without ranges (an inline law).
    beyond_observed: float | None = None
