"""Choosing a form by held-out error (`form: "auto"`, docs/law.md §4)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from app.law.errors import LawError, NotEnoughData
from app.law.forms import FORMS
from app.law.metrics import split
from app.law.select import (
    FormScore,
    choose,
    clearly_better,
    extra_parameters_pay,
    folds_for,
    select_form,
)
from app.law.synthetic import (
    SYNTHETIC_P2,
    SYNTHETIC_SIZES,
    make_rows,
    selection_rows,
)
from app.law.types import Dataset
from tests.law.test_new_forms import shift_rows, tpp_rows


def _p2_data(seed: int = 7) -> Dataset:
    return Dataset.from_rows(
        make_rows(
            params_by_method={"depth": SYNTHETIC_P2["depth"]},
            sizes=SYNTHETIC_SIZES[:3],
            n_checkpoints=12,
            noise=0.001,
            seed=seed,
        )
    )


def test_p2_data_selects_p2_and_the_table_covers_every_form() -> None:
    selection = select_form(_p2_data(), "rho")
    assert selection.chosen == "p2"
    assert [row.form for row in selection.table] == list(FORMS)
    # The ρ protocol (0.15, 0.25 → 0.35); inside its fit side, 0.15 → 0.25 would extrapolate
    # from a single level, so that fold is not added.
    (fold,) = selection.folds
    assert fold.name == "rho" and fold.test_runs == 3 and fold.train_runs == 6
    by_form = {row.form: row for row in selection.table}
    assert by_form["p2"].mean_mape is not None
    assert all(
        row.mean_mape is None or row.mean_mape > by_form["p2"].mean_mape
        for row in selection.table
        if row.form != "p2"
    )
    # curve has no parameters for the held-out runs: listed with the reason, never chosen.
    assert by_form["curve"].mean_mape is None
    assert by_form["curve"].reason is not None and "rho" in by_form["curve"].reason


def _study_synthetic(form: str) -> Dataset:
    """The nested study's synthetic family from `form` (studies/nested_selection.py): four sizes
    × three ρ × 12 checkpoints of 1e7–5e10 tokens, 0.5% noise."""
    return Dataset.from_rows(selection_rows(form))


def _nested(data: Dataset, protocol: str) -> Dataset:
    """The train side of `protocol`: all a user would have uploaded."""
    train, _ = split(data, protocol)  # type: ignore[arg-type]
    return data.take(train)


@pytest.mark.parametrize("protocol", ["D", "N0", "rho"])
def test_on_data_p2_made_auto_keeps_p2_chosen_on_the_train_side(protocol: str) -> None:
    selection = select_form(_nested(_study_synthetic("p2"), protocol), protocol)
    assert selection.chosen == "p2", selection.why
    rows = {row.form: row for row in selection.table}
    if protocol == "N0":
        # p2-shift (P² with D_s) wins the one N0 fold by 43% by fitting noise; its extra
        # parameter does not pay on the points themselves, so P² is kept.
        assert clearly_better(rows["p2-shift"], rows["p2"])
        assert "p2-shift contains it" in selection.why
    if protocol == "rho":
        # Two ρ levels on the train side: the fold fits on one, so it is no evidence.
        (fold,) = selection.folds
        assert not fold.evidence and "single level" in selection.why
        assert clearly_better(rows["p2-shift"], rows["p2"])


@pytest.mark.parametrize(("protocol", "kept"), [("D", "p2-tpp"), ("N0", "p2"), ("rho", "p2")])
def test_on_data_p2_tpp_made_auto_keeps_it_where_the_folds_show_it(
    protocol: str, kept: str
) -> None:
    # D: three folds of 12 held-out runs each, p2-tpp 15% below P²: kept. N0: one fold of three
    # runs where p2-tpp is within 10% of P² (too thin to leave P²); rho: the fold fits on a
    # single ρ level (no evidence). P² is kept in both.
    selection = select_form(_nested(_study_synthetic("p2-tpp"), protocol), protocol)
    assert selection.chosen == kept, selection.why


def test_the_extra_parameter_of_p2_shift_pays_only_on_data_that_need_it() -> None:
    assert extra_parameters_pay(Dataset.from_rows(shift_rows(seed=7)), "p2-shift")
    assert not extra_parameters_pay(_p2_data(), "p2-shift")


def test_a_fold_from_one_level_is_no_evidence_and_nesting_stops_where_p2_cannot_fit() -> None:
    data = _p2_data()
    two_rhos = data.take(data.x.rho < 0.3)
    (fold,) = folds_for(two_rhos, "rho")
    assert not fold.evidence and fold.as_dict()["evidence"] is False
    assert all(f.evidence for f in folds_for(data, "D"))
    # Three runs of five checkpoints: D's fit sides hold 12, 9 and 6 points; P² has 7
    # parameters, so the third fold is not added.
    short = data.take((data.run < 3) & (data.x.tokens <= np.unique(data.x.tokens)[4]))
    assert [f.n_train for f in folds_for(short, "D")] == [12, 9]
    # On the 9 points of the second fold the per-run curve (3 parameters a run) passes through
    # every point: that fold does not test it, and curve is weighed on the first fold only.
    rows = {row.form: row for row in select_form(short, "D", forms=["p2", "curve"]).table}
    curve = rows["curve"]
    assert curve.mape[0] is not None and curve.mape[1] is None
    assert curve.mean_mape == curve.mape[0] and set(curve.unit_folds) == {0}
    reason = str(curve.reason)
    assert "D inside fold 1" in reason and "none left" in reason
    assert None not in rows["p2"].mape and set(rows["p2"].unit_folds) == {0, 1}


def test_a_form_is_weighed_against_p2_on_the_folds_both_were_tested_on() -> None:
    p2 = FormScore(
        "p2", (1.0, 3.0), (0.01, 0.01), 2.0, 0.01, None, (1.0, 1.0, 3.0, 3.0), (0, 0, 1, 1)
    )
    # 0.95 on the first fold only: within 10% of P²'s 1.0 there, though below P²'s mean of 2.0.
    close = FormScore(
        "curve", (0.95, None), (0.01, None), 0.95, 0.01, "not tested", (0.9, 1.0), (0, 0)
    )
    assert not clearly_better(close, p2)
    assert choose([close, p2]) == "p2"
    clear = FormScore(
        "curve", (0.5, None), (0.01, None), 0.5, 0.01, "not tested", (0.5, 0.5), (0, 0)
    )
    assert clearly_better(clear, p2) and choose([clear, p2]) == "curve"


def test_two_short_runs_at_two_rho_levels_keep_p2() -> None:
    data = _p2_data()
    # One size, ρ 0.15 and 0.25, 8 checkpoints each: the rho fold fits P²'s 7 parameters on 8
    # points of a single ρ level (the SmolLM2 reference runs' shape).
    first = data.take(data.x.n0 == data.x.n0.min())
    short = first.take((first.x.rho < 0.3) & (first.x.tokens <= np.unique(first.x.tokens)[7]))
    selection = select_form(short, "rho")
    assert selection.chosen == "p2" and "no fold is evidence" in selection.why


def test_p2_tpp_data_selects_p2_tpp_when_extrapolating_in_n0() -> None:
    selection = select_form(Dataset.from_rows(tpp_rows(seed=7)), "N0")
    assert selection.chosen == "p2-tpp"
    scores = {row.form: row.mean_mape for row in selection.table}
    assert scores["p2-tpp"] is not None and scores["p2"] is not None
    assert scores["p2-tpp"] < 0.5 * scores["p2"]


def test_p2_shift_data_selects_p2_shift() -> None:
    selection = select_form(Dataset.from_rows(shift_rows(seed=7)), "rho")
    assert selection.chosen == "p2-shift"
    scores = {row.form: row.mean_mape for row in selection.table if row.mean_mape is not None}
    others = min(v for f, v in scores.items() if f != "p2-shift")
    assert scores["p2-shift"] < 0.75 * others


def test_the_runs_folds_hold_out_every_run_once_and_are_deterministic() -> None:
    data = _p2_data()
    folds = folds_for(data, "runs")
    assert len(folds) == 5 and [f.name for f in folds] == [f"runs {i}/5" for i in range(1, 6)]
    held = np.sum([f.test for f in folds], axis=0)
    assert np.all(held == 1)
    for fold in folds:
        assert not np.any(fold.train & fold.test)
        # whole runs: no run is on both sides
        assert not set(data.run[fold.train]) & set(data.run[fold.test])
    again = folds_for(data, "runs")
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))
    two_runs = data.take(data.run < 2)
    assert len(folds_for(two_runs, "runs")) == 2


def test_the_protocol_folds_are_the_split_of_docs_law_6_nested_in_its_fit_side() -> None:
    from app.law.metrics import split

    data = _p2_data()
    four_sizes = Dataset.from_rows(
        make_rows(params_by_method={"depth": SYNTHETIC_P2["depth"]}, n_checkpoints=6, seed=1)
    )
    cases = (("D", 3, data), ("N0", 1, data), ("N0", 2, four_sizes), ("rho", 1, data))
    for select_by, n_folds, sample in (*cases, ("rho-paper", 1, data)):
        folds = folds_for(sample, select_by)
        assert len(folds) == n_folds
        train, test = split(sample, select_by)  # type: ignore[arg-type]
        assert np.array_equal(folds[0].train, train) and np.array_equal(folds[0].test, test)
        assert folds[0].n_train == int(train.sum()) and folds[0].n_test == int(test.sum())
        for outer, inner in itertools.pairwise(folds):
            inner_train, inner_test = split(sample.take(outer.train), select_by)  # type: ignore[arg-type]
            assert np.array_equal(inner.train[outer.train], inner_train)
            assert np.array_equal(inner.test[outer.train], inner_test)
            assert not np.any((inner.train | inner.test) & ~outer.train)


def test_a_use_without_a_fold_is_a_clear_law_error() -> None:
    data = _p2_data()
    one_size = data.take(data.x.n0 == data.x.n0[0])
    with pytest.raises(NotEnoughData, match=r"select_by 'N0'.*2 sizes"):
        select_form(one_size, "N0")
    one_run = data.take(data.run == 0)
    with pytest.raises(NotEnoughData, match="at least 2 runs"):
        select_form(one_run, "runs")
    with pytest.raises(LawError, match="unknown select_by"):
        folds_for(data, "size")


def test_p2_is_kept_unless_another_form_is_clearly_better() -> None:
    def row(
        form: str, mape: float | None, reason: str | None = None, units: tuple[float, ...] = ()
    ) -> FormScore:
        rmse = 0.01 if mape is not None else None
        return FormScore(form, (mape,), (0.01,), mape, rmse, reason, units)

    assert choose([row("frantar", 1.0), row("p2", 1.0)]) == "p2"
    # Within the 10% margin of P²'s MAPE P² is kept; beyond it the other form is taken when
    # there are no per-run errors to weigh (one held-out run).
    assert choose([row("p2-shift", 0.91), row("p2", 1.0)]) == "p2"
    assert choose([row("p2-shift", 0.89), row("p2", 1.0)]) == "p2-shift"
    # Per-run errors: a gain smaller than its standard error keeps P² (one run carries it)...
    p2_units = (1.0, 1.0, 1.0, 1.0)
    noisy = (0.0, 0.0, 0.6, 2.0)  # mean 0.65; gains 1, 1, 0.4, -1: mean 0.35, SE 0.47
    steady = (0.7, 0.6, 0.65, 0.65)  # mean 0.65; gains 0.3..0.4: mean 0.35, SE 0.02
    assert choose([row("frantar", 0.65, units=noisy), row("p2", 1.0, units=p2_units)]) == "p2"
    assert choose([row("frantar", 0.65, units=steady), row("p2", 1.0, units=p2_units)]) == "frantar"
    # Without P², exact ties go to the order of the table; the lowest wins otherwise.
    assert choose([row("frantar", 0.5), row("compression", 0.5)]) == "frantar"
    assert choose([row("frantar", 0.51), row("compression", 0.5)]) == "compression"
    assert choose([row("curve", None, "rho: no run"), row("p2", 2.0)]) == "p2"
    # Folds that are no evidence keep P² whatever the scores...
    assert choose([row("frantar", 0.1), row("p2", 1.0)], evidence=False) == "p2"
    # ...and a form containing P² must also pay for its extra parameters.
    table = [row("p2-shift", 0.5), row("frantar", 0.7), row("p2", 1.0)]
    assert choose(table, pays=lambda form: True) == "p2-shift"
    assert choose(table, pays=lambda form: False) == "frantar"
    assert choose(table[::2], pays=lambda form: False) == "p2"
    # P² with too few points on every fold to be tested: kept where the points fit it, else
    # the lowest of the others.
    untested = row("p2", None, "not tested on rho (7 parameters, 7 points): none left to test it")
    assert choose([row("compression", 1.0), untested], p2_fits=True) == "p2"
    assert choose([row("compression", 1.0), untested]) == "compression"
    with pytest.raises(NotEnoughData, match="curve: rho: no run"):
        choose([row("curve", None, "rho: no run")])


def test_the_selection_is_json_ready() -> None:
    import json

    selection = select_form(_p2_data(), "D", forms=["p2", "compression"])
    document: dict[str, Any] = json.loads(json.dumps(selection.as_dict(), allow_nan=False))
    assert document["select_by"] == "D" and document["chosen"] == selection.chosen
    assert [f["name"] for f in document["folds"]] == ["D", "D inside fold 1", "D inside fold 2"]
    assert {r["form"] for r in document["table"]} == {"p2", "compression"}
    assert all(len(r["mape"]) == 3 and len(r["rmse"]) == 3 for r in document["table"])
    # One unit per held-out run of each fold: 9 runs in each of the 3 folds.
    assert all(len(r["run_mape"]) == 27 for r in document["table"])
    assert "standard error" in document["rule"]
