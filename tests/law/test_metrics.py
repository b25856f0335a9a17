"""Metrics (§5) and the generalisation splits (§6)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.law.errors import NotEnoughData
from app.law.metrics import asd, evaluate, levels, split
from app.law.types import Dataset, Features


def test_asd_reproduces_the_certified_example(vectors: dict[str, Any]) -> None:
    case = vectors["asd"]
    run = np.zeros(len(case["tokens"]), dtype=np.int64)
    got = asd(
        np.array(case["tokens"]), np.array(case["observed"]), np.array(case["predicted"]), run
    )
    assert got == pytest.approx(case["asd"], rel=1e-12)


def test_asd_sorts_by_tokens_and_never_crosses_runs(vectors: dict[str, Any]) -> None:
    case = vectors["asd"]
    t = np.array(case["tokens"] * 2)[::-1]
    obs = np.array(case["observed"] * 2)[::-1]
    pred = np.array(case["predicted"] * 2)[::-1]
    run = np.array([0] * 4 + [1] * 4, dtype=np.int64)
    assert asd(t, obs, pred, run) == pytest.approx(case["asd"], rel=1e-12)


def test_evaluate_on_the_certified_example(vectors: dict[str, Any]) -> None:
    case = vectors["asd"]
    n = len(case["tokens"])
    data = Dataset(
        Features(
            np.full(n, case["n0"]),
            np.full(n, case["rho"]),
            np.full(n, case["l0"]),
            np.array(case["tokens"]),
        ),
        np.array(case["observed"]),
        np.zeros(n, dtype=np.int64),
        ("run",),
    )
    m = evaluate("p2", case["law"], data)
    obs, pred = np.array(case["observed"]), np.array(case["predicted"])
    assert m.asd == pytest.approx(case["asd"], rel=1e-9)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((pred - obs) ** 2)), rel=1e-9)
    assert m.mape == pytest.approx(100 * np.mean(np.abs(pred - obs) / obs), rel=1e-9)
    assert m.r2 < 1


def _grid_data() -> Dataset:
    n0s, rhos, per_run = (5e8, 1e9, 3e9), (0.149, 0.26, 0.34), 10
    rows = [(n, r, t) for n in n0s for r in rhos for t in np.geomspace(1e7, 1e9, per_run)]
    runs = np.repeat(np.arange(len(n0s) * len(rhos)), per_run).astype(np.int64)
    arr = np.array(rows)
    return Dataset(
        Features(arr[:, 0], arr[:, 1], np.full(len(rows), 2.5), arr[:, 2]),
        np.full(len(rows), 2.7),
        runs,
        tuple(f"r{i}" for i in range(9)),
        family=("fam",) * len(rows),
    )


def test_d_split_holds_out_the_last_fifth_of_each_run() -> None:
    data = _grid_data()
    train, test = split(data, "D")
    assert train.sum() == 9 * 8 and test.sum() == 9 * 2
    for r in range(9):
        mine = data.run == r
        assert data.x.tokens[mine & train].max() < data.x.tokens[mine & test].min()


def test_n0_split_holds_out_the_largest_size_of_each_family() -> None:
    data = _grid_data()
    train, test = split(data, "N0")
    assert np.all(data.x.n0[test] == 3e9)
    assert np.all(data.x.n0[train] < 3e9)


def test_rho_split_matches_measured_rates_within_tolerance() -> None:
    data = _grid_data()
    train, test = split(data, "rho")
    assert set(np.round(data.x.rho[train], 3)) == {0.149, 0.26}
    assert set(np.round(data.x.rho[test], 3)) == {0.34}


def test_paper_rho_split_without_0_35_is_not_enough_data() -> None:
    data = _grid_data()
    with pytest.raises(NotEnoughData, match="rho-paper"):
        split(data.take(data.x.rho < 0.3), "rho-paper")


def test_rho_split_holds_out_the_highest_level_present() -> None:
    data = _grid_data()
    train, test = split(data.take(data.x.rho < 0.3), "rho")
    assert set(np.round(data.x.rho[data.x.rho < 0.3][test], 3)) == {0.26}
    assert set(np.round(data.x.rho[data.x.rho < 0.3][train], 3)) == {0.149}


def _levels_data(rhos: list[float], n0s: tuple[float, ...] = (1e9,)) -> Dataset:
    rows = [(n, r, t) for n in n0s for r in rhos for t in (1e7, 1e8, 1e9)]
    arr = np.array(rows)
    n_runs = len(rows) // 3
    return Dataset(
        Features(arr[:, 0], arr[:, 1], np.full(len(rows), 2.5), arr[:, 2]),
        np.full(len(rows), 2.7),
        np.repeat(np.arange(n_runs), 3).astype(np.int64),
        tuple(f"r{i}" for i in range(n_runs)),
        family=("fam",) * len(rows),
    )


def test_rho_levels_other_than_the_papers_hold_out_the_highest() -> None:
    # Measured ρ scatter about targets 0.1, 0.2, 0.3: three levels, 0.3 held out.
    data = _levels_data([0.098, 0.104, 0.195, 0.21, 0.291, 0.303, 0.31])
    assert list(levels(data, "rho")[::3]) == [0, 0, 1, 1, 2, 2, 2]
    train, test = split(data, "rho")
    assert np.all(data.x.rho[test] > 0.28) and np.all(data.x.rho[train] < 0.22)
    assert train.sum() + test.sum() == len(data)
    with pytest.raises(NotEnoughData, match="rho-paper"):
        split(data, "rho-paper")


def test_a_single_level_is_refused_by_every_level_protocol() -> None:
    data = _levels_data([0.25, 0.252, 0.265], n0s=(1e9, 1.03e9))
    with pytest.raises(NotEnoughData, match="rho protocol leaves the held-out side empty"):
        split(data, "rho")
    with pytest.raises(NotEnoughData, match=r"N0 protocol .* sizes within 5% are one"):
        split(data, "N0")


def test_n0_sizes_group_within_a_relative_tolerance() -> None:
    data = _levels_data([0.25], n0s=(1e9, 1.02e9, 3e9))
    train, test = split(data, "N0")
    assert set(data.x.n0[train]) == {1e9, 1.02e9} and set(data.x.n0[test]) == {3e9}


def _study(path: str) -> list[Dataset]:
    root = Path(__file__).resolve().parents[2]
    with (root / path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for key in sorted({(r["family"], r["method"]) for r in rows}):
        mine = [r for r in rows if (r["family"], r["method"]) == key]
        for r in mine:
            for name in ("n0", "rho", "l0", "tokens", "loss"):
                r[name] = float(r[name])
        out.append(Dataset.from_rows(mine))
    return out


@pytest.mark.parametrize(
    "path", ["studies/results/observations.csv", "studies/results/wide/observations.csv"]
)
def test_on_the_papers_grid_rho_splits_as_the_papers_split(path: str) -> None:
    for data in _study(path):
        by_levels = split(data, "rho")
        paper = split(data, "rho-paper")
        assert np.array_equal(by_levels[0], paper[0]) and np.array_equal(by_levels[1], paper[1])
        assert len(set(levels(data, "rho"))) == 3
