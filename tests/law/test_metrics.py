"""Metrics (§5) and the generalisation splits (§6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.law.errors import NotEnoughData
from app.law.metrics import asd, evaluate, split
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


def test_rho_split_without_0_35_is_not_enough_data() -> None:
    data = _grid_data()
    with pytest.raises(NotEnoughData, match="rho"):
        split(data.take(data.x.rho < 0.3), "rho")
