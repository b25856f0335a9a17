"""Choosing a form by held-out error: grouped cross-validation for one use (docs/law.md §4).

``form: "auto"`` fits every registered form on the train side of each fold and predicts the
held-out side. The folds follow the use the caller names (``select_by``):

- ``D``: one fold, the D protocol of docs/law.md §6 (the last 20% of each run held out);
- ``N0``: one fold, the N0 protocol (the largest size of each family held out);
- ``rho``: one fold, the ρ protocol (ρ ≈ 0.35 held out, ρ ≈ 0.15/0.25 fit);
- ``runs``: grouped K-fold over whole runs, K = min(5, runs), runs dealt to folds in the order
  of their sorted ids (deterministic).

The error of a form is its held-out MAPE (RMSE is kept beside it), averaged over the folds. The
chosen form has the lowest mean MAPE, except that ``p2`` is kept unless another form beats it
by more than 2% of its MAPE (a tie); exact ties between other forms go to the registry's
order. A form that cannot be fitted on a fold, or cannot predict one (``curve`` for runs it has
not seen), is listed with its reason and never chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from app.law.errors import LawError, NotEnoughData
from app.law.fitting import fit
from app.law.forms import DEFAULT_FORM, FORMS
from app.law.metrics import evaluate, split
from app.law.types import Dataset

BoolArray = npt.NDArray[np.bool_]

SelectBy = Literal["D", "N0", "rho", "runs"]
SELECT_BY: tuple[str, ...] = get_args(SelectBy)
# Folds of the runs protocol: at most this many, and never more than there are runs.
MAX_RUN_FOLDS = 5
# P² is kept unless another form's mean MAPE is lower by more than this share of P²'s. A form
# that nests P² (p2-shift, with D_s → 0) otherwise wins by fitting noise: 0.0709% against
# 0.0714% on data P² generated (tests/api/test_fits.py).
P2_TIE_RTOL = 0.02


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

    def as_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "mape": list(self.mape),
            "rmse": list(self.rmse),
            "mean_mape": self.mean_mape,
            "mean_rmse": self.mean_rmse,
            "reason": self.reason,
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
    try:
        train, test = split(data, select_by)  # type: ignore[arg-type]
    except NotEnoughData as exc:
        raise NotEnoughData(f"select_by {select_by!r} cannot hold anything out: {exc}") from None
    return (_fold(select_by, data, train, test),)


def _score(form: str, data: Dataset, folds: Sequence[Fold]) -> FormScore:
    mape: list[float | None] = [None] * len(folds)
    rmse: list[float | None] = [None] * len(folds)
    for i, fold in enumerate(folds):
        try:
            result = fit(form, data.take(fold.train))
            held = evaluate(form, result.params, data.take(fold.test))
        except (LawError, FloatingPointError) as exc:
            return FormScore(form, tuple(mape), tuple(rmse), None, None, f"{fold.name}: {exc}")
        if not (np.isfinite(held.mape) and np.isfinite(held.rmse)):
            reason = f"{fold.name}: the held-out prediction is not finite"
            return FormScore(form, tuple(mape), tuple(rmse), None, None, reason)
        mape[i], rmse[i] = float(held.mape), float(held.rmse)
    return FormScore(
        form,
        tuple(mape),
        tuple(rmse),
        float(np.mean(np.array(mape, dtype=np.float64))),
        float(np.mean(np.array(rmse, dtype=np.float64))),
    )


def choose(table: Sequence[FormScore]) -> str:
    """The form with the lowest mean MAPE, except that p2 is kept when it is within
    P2_TIE_RTOL (2%) of that; exact ties between other forms go to the order of `table`.
    NotEnoughData, with every form's reason, when no form was scored."""
    scored = [(row.form, row.mean_mape) for row in table if row.mean_mape is not None]
    if not scored:
        reasons = "; ".join(f"{row.form}: {row.reason}" for row in table)
        raise NotEnoughData(f"no form could be fitted and evaluated on every fold ({reasons})")
    best_form, best = min(scored, key=lambda item: item[1])
    p2 = dict(scored).get(DEFAULT_FORM)
    if p2 is not None and p2 * (1.0 - P2_TIE_RTOL) <= best:
        return DEFAULT_FORM
    return best_form


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
