"""Rows → Dataset: the one converter every caller uses (service, stop rule, CLI, study)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.law.types import Dataset


@dataclass(frozen=True)
class Checkpoint:
    """A row without labels, like a job's checkpoint in the early-stop rule."""

    run_id: str
    n0: float
    rho: float
    l0: float
    tokens: float
    loss: float


def test_runs_are_numbered_in_order_of_first_appearance() -> None:
    data = Dataset.from_rows(
        [Checkpoint("b", 1e6, 0.25, 2.0, t, 2.5) for t in (1e4, 1e5)]
        + [Checkpoint("a", 2e6, 0.35, 1.9, 1e4, 2.6), Checkpoint("b", 1e6, 0.25, 2.0, 1e6, 2.4)]
    )
    assert data.run_ids == ("b", "a")
    assert data.run.tolist() == [0, 0, 1, 0]
    assert data.x.tokens.tolist() == [1e4, 1e5, 1e4, 1e6]
    assert data.x.n0.dtype == np.float64 and data.loss.tolist() == [2.5, 2.5, 2.6, 2.4]
    assert data.family == () and data.method == () and data.protocol == ()


def test_mappings_and_objects_give_the_same_dataset_with_labels() -> None:
    record = {
        "run_id": "r",
        "n0": 1e6,
        "rho": 0.25,
        "l0": 2.0,
        "tokens": 1e4,
        "loss": 2.5,
        "family": "llama",
        "method": "depth",
        "protocol": None,
    }
    from_dict = Dataset.from_rows([record])
    assert from_dict.family == ("llama",) and from_dict.method == ("depth",)
    assert from_dict.protocol == ("",)  # a stored null protocol reads as the empty one
    from_object = Dataset.from_rows([Checkpoint("r", 1e6, 0.25, 2.0, 1e4, 2.5)])
    for name in ("n0", "rho", "l0", "tokens"):
        assert np.array_equal(getattr(from_object.x, name), getattr(from_dict.x, name))
    assert np.array_equal(from_object.loss, from_dict.loss)
    assert from_object.run_ids == from_dict.run_ids


def test_no_rows_give_an_empty_dataset() -> None:
    data = Dataset.from_rows([])
    assert len(data) == 0 and data.n_runs == 0
