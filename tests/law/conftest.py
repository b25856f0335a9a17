"""Shared fixtures of the law tests: certified vectors and one synthetic fit per session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.law.fitting import fit
from app.law.synthetic import SYNTHETIC_P2, SYNTHETIC_SIZES, make_rows
from app.law.types import Dataset, FitResult

# A verbatim copy of the design's p2-vectors.json, so that a fresh clone tests against it.
VECTORS = Path(__file__).with_name("p2_vectors.json")


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """p2-vectors.json (the certified values of docs/law.md)."""
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


@pytest.fixture(scope="session")
def synthetic_rows() -> list[Any]:
    """3 sizes × 3 ρ × 15 checkpoints of depth pruning, 0.5% noise (issue 2's "done when")."""
    return make_rows(
        params_by_method={"depth": SYNTHETIC_P2["depth"]},
        sizes=SYNTHETIC_SIZES[:3],
        seed=7,
    )


@pytest.fixture(scope="session")
def synthetic(synthetic_rows: list[Any]) -> Dataset:
    return Dataset.from_rows(synthetic_rows)


@pytest.fixture(scope="session")
def truth(synthetic_rows: list[Any]) -> np.ndarray:
    """The noise-free losses of the synthetic observations."""
    return np.array([r.true_loss for r in synthetic_rows])


@pytest.fixture(scope="session")
def fitted_d(synthetic: Dataset) -> FitResult:
    """The p2 fit with the D hold-out protocol, shared by several tests."""
    return fit("p2", synthetic, holdout="D")


@pytest.fixture(scope="session")
def fitted(synthetic: Dataset) -> FitResult:
    """The p2 fit on all synthetic points."""
    return fit("p2", synthetic)
