"""Choosing a form by held-out error: grouped cross-validation for one use (docs/law.md §4).

``form: "auto"`` fits every registered form on the train side of each fold and predicts the
held-out side. The folds follow the use the caller names (``select_by``):

- ``D``, ``N0``, ``rho``, ``rho-paper``: the protocol of docs/law.md §6 (`app.law.metrics.split`),
  then the same protocol again on its own fit side, and so on, up to MAX_PROTOCOL_FOLDS folds
  while the fit side keeps ≥ 2 levels (``N0`` on sizes a < b < c < d: fit a, b, c → d, then
  fit a, b → c; ``D``: fit the first 64% of each run → the next 16%, …);
- ``runs``: grouped K-fold over whole runs, K = min(5, runs), runs dealt to folds in the order
  of their sorted ids (deterministic).

A nested fold is added only while its fit side still holds ≥ 2 levels of the variable the use
extrapolates in and more points than P² has parameters (P², the reference every other form is
weighed against, must be scorable on every fold). A form is scored on a fold only where its fit
side holds more points than the form has parameters: with as many, the fit passes through them
whatever the law, and the held-out error does not test the form; it is compared with P² on
the folds that do test it (the per-run ``curve`` on short runs).

The error of a form is its held-out MAPE (RMSE is kept beside it), averaged over the folds, and
each held-out run of each fold is a unit of comparison. The choice pays for its noise: ``p2``,
the paper's form, is kept

- when no fold is evidence: the fit side of every fold holds a single size (``N0``) or ρ level
  (``rho``), so the exponent of that variable is free and every form's held-out error is
  noise (the ``rho`` use on data with two ρ levels), or too few points to test P² itself
  (while the selected points are enough to fit it);
- unless another form's mean MAPE is lower by more than P2_MARGIN (10%) of P²'s *and* its
  per-unit errors beat P²'s by more than one standard error of their paired difference (a
  one-standard-error rule);
- and, for a form that contains P² as a special case (NESTS_P2: ``p2-shift`` is P² at
  D_s = 0), unless its extra parameters pay on the selected points themselves: an F test of
  the log residuals of both forms fitted there, at level NESTED_ALPHA. Such a form fits any
  data at least as well as P² and can win a fold by fitting its noise.

Each form is weighed against P² on the folds both were tested on; among the forms that are
left, the lowest ratio of their mean MAPE to P²'s there wins, exact ties going to the
registry's order. A form that cannot be fitted on a fold, or cannot predict one (``curve``
for runs it has not seen), is listed with its reason and never chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.stats import f as f_distribution

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
# Forms that contain P² as a special case, with how many parameters they add: p2-shift is P² at
# D_s = 0. On data P² made, p2-shift beat P² by 43% on the one N0 fold of the nested study
# (studies/results/issue16) at the same held-out error: such a form must also pay for its
# extra parameters on the selected points (an F test at NESTED_ALPHA).
NESTS_P2: dict[str, int] = {"p2-shift": 1}
NESTED_ALPHA = 0.01
# How a score's reason begins for the folds whose fit side has too few points to test the form.
UNTESTED = "not tested on"


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
    # Whether the fit side holds ≥ 2 levels of the variable the use extrapolates in (always
    # for D and runs): a fold without them is no evidence for or against P² (`choose`).
    evidence: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "train_runs": self.train_runs,
            "test_runs": self.test_runs,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class FormScore:
    """One form's held-out error on each fold (None where it was not computed) and its mean
    over the folds it was tested on.

    ``reason`` says why a form could not be scored (such a form has no mean and is not chosen),
    or on which folds it was not tested (too few points for its parameters there).
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
    # The fold (index into the folds) of each unit; empty when not recorded.
    unit_folds: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "mape": list(self.mape),
            "rmse": list(self.rmse),
            "mean_mape": self.mean_mape,
            "mean_rmse": self.mean_rmse,
            "reason": self.reason,
            "run_mape": list(self.units),
            "run_fold": list(self.unit_folds),
        }


@dataclass(frozen=True)
class Selection:
    """The comparison of an ``auto`` fit: the folds, every form's score, and the form kept."""

    select_by: SelectBy
    folds: tuple[Fold, ...]
    table: tuple[FormScore, ...]
    chosen: str
    # Why `chosen` was kept, in words.
    why: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``select_by``, ``chosen``, ``why``, ``metric`` (what was minimised),
        ``rule``, ``folds`` and ``table`` (one row per form, fold errors in the order of
        ``folds``)."""
        return {
            "select_by": self.select_by,
            "chosen": self.chosen,
            "why": self.why,
            "metric": "mean held-out MAPE (percent) over the folds",
            "rule": (
                "p2 kept when no fold's fit side spans 2 levels of the variable held out, "
                f"else unless another form's mean MAPE is lower by more than {P2_MARGIN:.0%} "
                "of p2's and by more than one standard error of the paired per-run difference "
                "(a form containing p2 must also pass an F test of its extra parameters at "
                f"{NESTED_ALPHA:.0%}), each compared with p2 on the folds both were tested "
                "on; then the lowest ratio to p2's mean MAPE there"
            ),
            "folds": [f.as_dict() for f in self.folds],
            "table": [row.as_dict() for row in self.table],
        }


def _fold(
    name: str, data: Dataset, train: BoolArray, test: BoolArray, evidence: bool = True
) -> Fold:
    return Fold(
        name=name,
        train=train,
        test=test,
        n_train=int(np.count_nonzero(train)),
        n_test=int(np.count_nonzero(test)),
        train_runs=int(np.unique(data.run[train]).size),
        test_runs=int(np.unique(data.run[test]).size),
        evidence=evidence,
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
        spans = _spans_levels(data.take(train), select_by)
        if depth > 0 and not spans:
            # Extrapolating from a single size or ρ leaves the exponent of that variable free:
            # every form's error there is noise, so such a nested fold is not added (the first
            # fold is kept, marked as no evidence, so that the table still shows the forms).
            break
        if depth > 0 and np.count_nonzero(train) <= get_form(DEFAULT_FORM).n_parameters(data):
            # P² cannot be tested there (`_score`): the fold would weigh nothing against it.
            break
        name = select_by if depth == 0 else f"{select_by} inside fold {depth}"
        folds.append(_fold(name, data, train, test, evidence=spans))
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
    unit_folds: list[int] = []
    untested: list[str] = []
    law = get_form(form)
    for i, fold in enumerate(folds):
        train = data.take(fold.train)
        p = law.n_parameters(train)
        if fold.n_train <= p:
            # As many parameters as points: the fit passes through them whatever the law, so
            # the fold does not test the form (the per-run curve on 3 points of each run).
            untested.append(f"{fold.name} ({p} parameters, {fold.n_train} points)")
            continue
        try:
            result = fit(form, train)
            test = data.take(fold.test)
            held = evaluate(form, result.params, test)
        except (LawError, FloatingPointError) as exc:
            return FormScore(form, tuple(mape), tuple(rmse), None, None, f"{fold.name}: {exc}")
        if not (np.isfinite(held.mape) and np.isfinite(held.rmse)):
            reason = f"{fold.name}: the held-out prediction is not finite"
            return FormScore(form, tuple(mape), tuple(rmse), None, None, reason)
        mape[i], rmse[i] = float(held.mape), float(held.rmse)
        per_run = _per_run_mape(test.loss, law.predict_data(result.params, test), test.run)
        units += per_run
        unit_folds += [i] * len(per_run)
    note = f"{UNTESTED} {', '.join(untested)}: none left to test it" if untested else None
    if len(untested) == len(folds):
        return FormScore(form, tuple(mape), tuple(rmse), None, None, note)
    return FormScore(
        form,
        tuple(mape),
        tuple(rmse),
        float(np.mean([m for m in mape if m is not None])),
        float(np.mean([r for r in rmse if r is not None])),
        note,
        units=tuple(units),
        unit_folds=tuple(unit_folds),
    )


def _against_p2(row: FormScore, p2: FormScore) -> tuple[float, float, FloatArray | None] | None:
    """`row`'s and P²'s mean MAPE over the folds both were tested on, and the paired per-run
    gains (P²'s error less `row`'s) there where both recorded them; None without such a fold."""
    common = [
        i
        for i, (a, b) in enumerate(zip(row.mape, p2.mape, strict=False))
        if a is not None and b is not None
    ]
    if not common:
        return None
    row_mean = float(np.mean([row.mape[i] for i in common]))
    p2_mean = float(np.mean([p2.mape[i] for i in common]))
    if row.unit_folds and p2.unit_folds:
        mine = [u for u, f in zip(row.units, row.unit_folds, strict=True) if f in common]
        ref = [u for u, f in zip(p2.units, p2.unit_folds, strict=True) if f in common]
    else:
        mine, ref = list(row.units), list(p2.units)
    if len(mine) != len(ref) or len(mine) < 2:
        return row_mean, p2_mean, None
    return row_mean, p2_mean, np.asarray(ref) - np.asarray(mine)


def clearly_better(row: FormScore, p2: FormScore) -> bool:
    """Whether `row` beats P², on the folds both were tested on, by more than P2_MARGIN of P²'s
    mean MAPE and, where both were scored on the same ≥ 2 held-out runs, by more than one
    standard error of the paired per-run difference."""
    if row.mean_mape is None or p2.mean_mape is None:
        return False
    compared = _against_p2(row, p2)
    if compared is None:
        return False
    row_mean, p2_mean, gain = compared
    if row_mean >= p2_mean * (1.0 - P2_MARGIN):
        return False
    if gain is None:
        return True
    se = float(np.std(gain, ddof=1) / np.sqrt(gain.size))
    return float(np.mean(gain)) > se


def _ratio_to_p2(row: FormScore, p2: FormScore) -> float:
    compared = _against_p2(row, p2)
    return float("inf") if compared is None else compared[0] / max(compared[1], 1e-300)


def choose(
    table: Sequence[FormScore],
    *,
    evidence: bool = True,
    pays: Callable[[str], bool] | None = None,
    p2_fits: bool = False,
) -> str:
    """The form `auto` keeps (see the module docstring): p2 when the folds are no `evidence`
    or unless another form is `clearly_better` (and, for a form in NESTS_P2, its extra
    parameters `pays`), then the lowest ratio to P²'s mean MAPE (on the folds both were
    tested on) among those that are; without a scored p2, the lowest mean MAPE. Exact ties
    go to the order of `table`. Where p2 has too few points on every fold to be tested and
    `p2_fits` (the selected points can be fitted by it), p2 too. NotEnoughData, with every
    form's reason, when no form was scored."""
    return _choose(table, evidence=evidence, pays=pays, p2_fits=p2_fits)[0]


def _choose(
    table: Sequence[FormScore],
    *,
    evidence: bool,
    pays: Callable[[str], bool] | None,
    p2_fits: bool = False,
) -> tuple[str, str]:
    scored = [row for row in table if row.mean_mape is not None]
    untested = next(
        (
            row
            for row in table
            if row.form == DEFAULT_FORM
            and row.mean_mape is None
            and row.unit_folds == ()
            and (row.reason or "").startswith(UNTESTED)
        ),
        None,
    )
    if untested is not None and p2_fits:
        # Too few points on every fold's fit side to test P²: no fold weighs against it.
        return DEFAULT_FORM, (
            f"{DEFAULT_FORM} kept: the fit side of every fold has too few points to test it, "
            "so no fold is evidence against it"
        )
    if not scored:
        reasons = "; ".join(f"{row.form}: {row.reason}" for row in table)
        raise NotEnoughData(f"no form could be fitted and evaluated on every fold ({reasons})")
    p2 = next((row for row in scored if row.form == DEFAULT_FORM), None)
    if p2 is None:
        best = min(scored, key=lambda row: float(row.mean_mape or 0.0)).form
        return best, f"{DEFAULT_FORM} could not be scored; {best} has the lowest mean MAPE"
    if not evidence:
        return DEFAULT_FORM, (
            f"{DEFAULT_FORM} kept: the fit side of every fold holds a single level of the "
            "variable held out, so no fold is evidence against it"
        )
    # Each form against P² on the folds both were tested on; the lowest ratio first.
    better = sorted(
        (row for row in scored if row.form != DEFAULT_FORM and clearly_better(row, p2)),
        key=lambda row: _ratio_to_p2(row, p2),
    )
    refused = []
    for row in better:
        if row.form in NESTS_P2 and pays is not None and not pays(row.form):
            refused.append(row.form)
            continue
        return row.form, (
            f"{row.form}'s mean MAPE is lower than {DEFAULT_FORM}'s (on the folds both were "
            f"tested on) by more than {P2_MARGIN:.0%} and by more than one standard error of "
            "the paired per-run difference"
        )
    if refused:
        return DEFAULT_FORM, (
            f"{DEFAULT_FORM} kept: {', '.join(refused)} contains it and its extra parameters "
            f"do not pay (F test at {NESTED_ALPHA:.0%}); no other form is clearly better"
        )
    return DEFAULT_FORM, f"{DEFAULT_FORM} kept: no other form is clearly better"


def extra_parameters_pay(data: Dataset, form: str) -> bool:
    """Whether `form` (in NESTS_P2) fits the points of `data` better than P² by more than its
    extra parameters buy by chance: an F test of the sums of squared log residuals of the two
    fits, significant at NESTED_ALPHA. False when either cannot be fitted."""
    k = NESTS_P2[form]
    try:
        rss = {}
        for name in (DEFAULT_FORM, form):
            result = fit(name, data)
            predicted = get_form(name).predict_data(result.params, data)
            rss[name] = float(np.sum((np.log(predicted) - np.log(data.loss)) ** 2))
        dof = len(data) - get_form(form).n_parameters(data)
    except (LawError, FloatingPointError):
        return False
    if dof <= 0 or not all(np.isfinite(v) for v in rss.values()) or rss[form] <= 0:
        return False
    statistic = (rss[DEFAULT_FORM] - rss[form]) / k / (rss[form] / dof)
    return statistic > 0 and float(f_distribution.sf(statistic, k, dof)) < NESTED_ALPHA


def select_form(data: Dataset, select_by: str, *, forms: Sequence[str] | None = None) -> Selection:
    """Score every registered form (or `forms`) on the folds of `select_by`; keep the best.

    LawError (NotEnoughData) when no fold can be formed, or when no form can be scored.
    """
    folds = folds_for(data, select_by)
    names = list(FORMS) if forms is None else list(forms)
    table = tuple(_score(name, data, folds) for name in names)
    chosen, why = _choose(
        table,
        evidence=any(fold.evidence for fold in folds),
        pays=lambda form: extra_parameters_pay(data, form),
        p2_fits=len(data) > get_form(DEFAULT_FORM).n_parameters(data),
    )
    return Selection(
        select_by=select_by,  # type: ignore[arg-type]
        folds=folds,
        table=table,
        chosen=chosen,
        why=why,
    )
