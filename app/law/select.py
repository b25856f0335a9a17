"""Choosing a form by held-out error: grouped cross-validation for one use (docs/law.md §4).

``form: "auto"`` fits every registered form on the train side of each fold and predicts the
held-out side. The folds follow the use the caller names (``select_by``):

- ``D``, ``N0``, ``rho``, ``rho-paper``: the protocol of docs/law.md §6 (`app.law.metrics.split`),
  then the same protocol again on its own fit side, and so on, up to MAX_PROTOCOL_FOLDS folds
  while the fit side keeps ≥ 2 levels (``N0`` on sizes a < b < c < d: fit a, b, c → d, then
  fit a, b → c; ``D``: fit the first 64% of each run → the next 16%, …);
- ``runs``: grouped K-fold over whole runs, K = min(5, runs), runs dealt to folds in the order
  of their sorted ids (deterministic).

The error of a form is its held-out MAPE (RMSE is kept beside it), averaged over the folds, and
each held-out run of each fold is a unit of comparison. The choice pays for its noise: ``p2``,
the paper's form, is kept unless another form's mean MAPE is lower by more than P2_MARGIN (10%)
of P²'s *and* its per-unit errors beat P²'s by more than one standard error of their paired
difference (a one-standard-error rule); among the forms that do, the lowest mean MAPE wins,
exact ties going to the registry's order. A form that cannot be fitted on a fold, or cannot
predict one (``curve`` for runs it has not seen), is listed with its reason and never chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from app.law.errors import LawError, NotEnoughData
from app.law.fitting import fit
from app.law.forms import DEFAULT_FORM, FORMS, get_form
from app.law.metrics import evaluate, levels, split
from app.law.types import Dataset, FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

SelectBy = Literal["D", "N0", "rho", "rho-paper", "runs"]
SELECT_BY: tuple[str, ...] = get_args(SelectBy)
# Folds of the runs protocol: at most this many, and never more than there are runs.
MAX_RUN_FOLDS = 5
# Folds of a protocol use: the protocol nested in its own fit side, at most this many deep.
MAX_PROTOCOL_FOLDS = 3
# P² is kept unless another form's mean MAPE is lower by more than this share of P²'s and by
# more than one standard error of the paired per-run difference. A form that nests P²
# (p2-shift, with D_s → 0) otherwise wins by fitting noise (0.0709% against 0.0714% on data P²
# generated, tests/api/test_fits.py), and on unseen curves a choice by the lowest mean of one
# fold lost to P² in 7 of 12 method × protocol cells (docs/study.md).
P2_MARGIN = 0.10


@dataclass(frozen=True)
class Fold:
    """One train/test split: its name, and how many points and runs each side holds."""

    name: str
    train: BoolArray
    test: BoolArray
    n_train: int
    n_test: int
    train_runs: int
    test_runs: int

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "train_runs": self.train_runs,
            "test_runs": self.test_runs,
        }


@dataclass(frozen=True)
class FormScore:
    """One form's held-out error on each fold (None where it was not computed) and its mean.

    ``reason`` says why a form could not be scored; such a form has no mean and is not chosen.
    """

    form: str
    mape: tuple[float | None, ...]
    rmse: tuple[float | None, ...]
    mean_mape: float | None
    mean_rmse: float | None
    reason: str | None = None
    # Held-out MAPE of each held-out run of each fold (fold order, then run order): the units
    # the one-standard-error rule pairs against P²'s.
    units: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "mape": list(self.mape),
            "rmse": list(self.rmse),
            "mean_mape": self.mean_mape,
            "mean_rmse": self.mean_rmse,
            "reason": self.reason,
            "run_mape": list(self.units),
        }


@dataclass(frozen=True)
class Selection:
    """The comparison of an ``auto`` fit: the folds, every form's score, and the form kept."""

    select_by: SelectBy
    folds: tuple[Fold, ...]
    table: tuple[FormScore, ...]
    chosen: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``select_by``, ``chosen``, ``metric`` (what was minimised), ``folds`` and
        ``table`` (one row per form, fold errors in the order of ``folds``)."""
        return {
            "select_by": self.select_by,
            "chosen": self.chosen,
            "metric": "mean held-out MAPE (percent) over the folds",
            "rule": (
                f"p2 kept unless another form's mean MAPE is lower by more than "
                f"{P2_MARGIN:.0%} of p2's and by more than one standard error of the paired "
                "per-run difference; then the lowest mean MAPE"
            ),
            "folds": [f.as_dict() for f in self.folds],
            "table": [row.as_dict() for row in self.table],
        }


def _fold(name: str, data: Dataset, train: BoolArray, test: BoolArray) -> Fold:
    return Fold(
        name=name,
        train=train,
        test=test,
        n_train=int(np.count_nonzero(train)),
        n_test=int(np.count_nonzero(test)),
        train_runs=int(np.unique(data.run[train]).size),
        test_runs=int(np.unique(data.run[test]).size),
    )


def folds_for(data: Dataset, select_by: str) -> tuple[Fold, ...]:
    """The folds of a use (see the module docstring); LawError when none can be formed."""
    if select_by not in SELECT_BY:
        raise LawError(f"unknown select_by {select_by!r}; use one of {', '.join(SELECT_BY)}")
    if select_by == "runs":
        present = np.unique(data.run)
        if present.size < 2:
            raise NotEnoughData(
                f"select_by 'runs' holds out whole runs and needs at least 2 runs; "
                f"the selection has {present.size}"
            )
        k = min(MAX_RUN_FOLDS, int(present.size))
        ordered = sorted(present, key=lambda r: data.run_ids[int(r)])
        folds = []
        for j in range(k):
            held = np.array(ordered[j::k], dtype=np.int64)
            test = np.isin(data.run, held)
            folds.append(_fold(f"runs {j + 1}/{k}", data, ~test, test))
        return tuple(folds)
    folds = []
    inside = np.ones(len(data), dtype=bool)
    for depth in range(MAX_PROTOCOL_FOLDS):
        try:
            train_in, test_in = split(data.take(inside), select_by)  # type: ignore[arg-type]
        except NotEnoughData as exc:
            if depth == 0:
                raise NotEnoughData(
                    f"select_by {select_by!r} cannot hold anything out: {exc}"
                ) from None
            break
        where = np.flatnonzero(inside)
        train = np.zeros(len(data), dtype=bool)
        test = np.zeros(len(data), dtype=bool)
        train[where[train_in]] = True
        test[where[test_in]] = True
        if depth > 0 and not _spans_levels(data.take(train), select_by):
            # Extrapolating from a single size or ρ leaves the exponent of that variable free:
            # every form's error there is noise, so such a nested fold is not added.
            break
        name = select_by if depth == 0 else f"{select_by} inside fold {depth}"
        folds.append(_fold(name, data, train, test))
        inside = train
    return tuple(folds)


def _spans_levels(train: Dataset, select_by: str) -> bool:
    """Whether a fit side holds ≥ 2 levels of the variable `select_by` extrapolates in (always
    for D: it extrapolates in tokens within each run)."""
    if select_by == "D":
        return True
    variable: Literal["n0", "rho"] = "n0" if select_by == "N0" else "rho"
    return bool(np.max(levels(train, variable)) >= 1)


def _per_run_mape(observed: FloatArray, predicted: FloatArray, run: IntArray) -> list[float]:
    """MAPE (percent) of each run, in the order of the sorted run indices."""
    out = []
    for r in np.unique(run):
        mine = run == r
        out.append(
            float(100.0 * np.mean(np.abs(predicted[mine] - observed[mine]) / observed[mine]))
        )
    return out


def _score(form: str, data: Dataset, folds: Sequence[Fold]) -> FormScore:
    mape: list[float | None] = [None] * len(folds)
    rmse: list[float | None] = [None] * len(folds)
    units: list[float] = []
    law = get_form(form)
    for i, fold in enumerate(folds):
        try:
            result = fit(form, data.take(fold.train))
            test = data.take(fold.test)
            held = evaluate(form, result.params, test)
        except (LawError, FloatingPointError) as exc:
            return FormScore(form, tuple(mape), tuple(rmse), None, None, f"{fold.name}: {exc}")
        if not (np.isfinite(held.mape) and np.isfinite(held.rmse)):
            reason = f"{fold.name}: the held-out prediction is not finite"
            return FormScore(form, tuple(mape), tuple(rmse), None, None, reason)
        mape[i], rmse[i] = float(held.mape), float(held.rmse)
        units += _per_run_mape(test.loss, law.predict_data(result.params, test), test.run)
    return FormScore(
        form,
        tuple(mape),
        tuple(rmse),
        float(np.mean(np.array(mape, dtype=np.float64))),
        float(np.mean(np.array(rmse, dtype=np.float64))),
        units=tuple(units),
    )


def clearly_better(row: FormScore, p2: FormScore) -> bool:
    """Whether `row` beats P² by more than P2_MARGIN of P²'s mean MAPE and, where both were
    scored on the same ≥ 2 held-out runs, by more than one standard error of the paired
    per-run difference."""
    if row.mean_mape is None or p2.mean_mape is None:
        return False
    if row.mean_mape >= p2.mean_mape * (1.0 - P2_MARGIN):
        return False
    if len(row.units) != len(p2.units) or len(row.units) < 2:
        return True
    gain = np.asarray(p2.units) - np.asarray(row.units)
    se = float(np.std(gain, ddof=1) / np.sqrt(gain.size))
    return float(np.mean(gain)) > se


def choose(table: Sequence[FormScore]) -> str:
    """The form `auto` keeps (see the module docstring): p2 unless another form is
    `clearly_better`, then the lowest mean MAPE among those that are; without a scored p2, the
    lowest mean MAPE. Exact ties go to the order of `table`. NotEnoughData, with every form's
    reason, when no form was scored."""
    scored = [row for row in table if row.mean_mape is not None]
    if not scored:
        reasons = "; ".join(f"{row.form}: {row.reason}" for row in table)
        raise NotEnoughData(f"no form could be fitted and evaluated on every fold ({reasons})")
    p2 = next((row for row in scored if row.form == DEFAULT_FORM), None)
    if p2 is not None:
        scored = [row for row in scored if row.form != DEFAULT_FORM and clearly_better(row, p2)]
        if not scored:
            return DEFAULT_FORM
    return min(scored, key=lambda row: float(row.mean_mape or 0.0)).form


def select_form(data: Dataset, select_by: str, *, forms: Sequence[str] | None = None) -> Selection:
    """Score every registered form (or `forms`) on the folds of `select_by`; keep the best.

    LawError (NotEnoughData) when no fold can be formed, or when no form can be scored.
    """
    folds = folds_for(data, select_by)
    names = list(FORMS) if forms is None else list(forms)
    table = tuple(_score(name, data, folds) for name in names)
    return Selection(
        select_by=select_by,  # type: ignore[arg-type]
        folds=folds,
        table=table,
        chosen=choose(table),
    )
