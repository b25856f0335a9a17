"""The p2-tpp form (P² on tokens per parameter, shifted): certified values, floor, rules, fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.law.errors import UnreachableTarget
from app.law.fitting import fit
from app.law.forms import get_form
from app.law.recommend import numeric_tokens, recommend
from app.law.synthetic import SYNTHETIC_SIZES, make_rows
from app.law.types import Dataset, Features

VECTORS = Path(__file__).with_name("p2_tpp_vectors.json")
#: Constants of a p2-tpp law for synthetic data: the shift T_s (0.3 tokens per parameter) is
#: wide enough that a power law in D alone cannot follow the flat start.
TPP_LAW = {
    "N_C": 0.0,
    "D_C": 0.08,
    "E": 0.02,
    "alpha": 0.3,
    "beta": 0.45,
    "gamma": -0.9,
    "T_s": 0.3,
}


@pytest.fixture(scope="module")
def tpp_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _x(n0: float, rho: float, l0: float, tokens: float) -> Features:
    return Features(np.array([n0]), np.array([rho]), np.array([l0]), np.array([tokens]))


def tpp_rows(*, seed: int, noise: float = 0.001) -> list[Any]:
    """Four sizes × three ρ × 12 checkpoints of 1e7–5e10 tokens from TPP_LAW (synthetic)."""
    return make_rows(
        params_by_method={"depth": TPP_LAW},
        sizes=SYNTHETIC_SIZES,
        n_checkpoints=12,
        max_tokens=5e10,
        noise=noise,
        seed=seed,
        form="p2-tpp",
    )


def test_every_certified_prediction_and_floor_is_reproduced(tpp_vectors: dict[str, Any]) -> None:
    law = get_form("p2-tpp")
    for case in tpp_vectors["predict"]:
        x = _x(case["n0"], case["rho"], case["l0"], case["tokens"])
        assert float(law.predict(case["law"], x)[0]) == pytest.approx(case["loss"], rel=1e-9)
        assert float(law.floor(case["law"], x)[0]) == pytest.approx(case["floor_loss"], rel=1e-9)


def test_the_floor_is_the_large_token_limit(tpp_vectors: dict[str, Any]) -> None:
    law = get_form("p2-tpp")
    params = tpp_vectors["predict"][0]["law"]
    far = law.predict(params, _x(1e9, 0.25, 2.5, 1e40))
    assert far[0] == pytest.approx(law.floor(params, _x(1e9, 0.25, 2.5, 1.0))[0], rel=1e-9)


def test_the_shift_flattens_the_start_and_vanishes_later() -> None:
    law = get_form("p2-tpp")
    shifted = {**TPP_LAW, "T_s": 0.3}
    unshifted = {**TPP_LAW, "T_s": 0.0}
    early = _x(1e9, 0.25, 2.5, 1e6)  # 0.001 tokens per parameter, far below T_s
    late = _x(1e9, 0.25, 2.5, 1e13)  # 10,000 tokens per parameter
    assert law.predict(shifted, early)[0] < law.predict(unshifted, early)[0] - 0.1
    assert law.predict(shifted, late)[0] == pytest.approx(law.predict(unshifted, late)[0], rel=1e-4)


def test_every_certified_recommendation_is_reproduced(tpp_vectors: dict[str, Any]) -> None:
    for case in tpp_vectors["recommend"]:
        got = recommend(
            "p2-tpp",
            case["law"],
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule=case["rule"],
            threshold=case.get("threshold"),
            target_loss=case.get("target_loss"),
        )
        assert got.tokens == pytest.approx(case["tokens"], rel=1e-6)
        assert got.floor_loss == pytest.approx(case["floor_loss"], rel=1e-6)
        assert got.predicted_loss == pytest.approx(case["predicted_loss"], rel=1e-6)


def test_the_closed_forms_agree_with_the_numeric_root_finder(tpp_vectors: dict[str, Any]) -> None:
    law = get_form("p2-tpp")
    for case in tpp_vectors["recommend"]:
        value = case.get("threshold", case.get("target_loss"))
        x = _x(case["n0"], case["rho"], case["l0"], 1.0)
        closed = law.closed_form_tokens(case["law"], x, case["rule"], value)
        assert closed is not None
        got = numeric_tokens(
            "p2-tpp",
            case["law"],
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule=case["rule"],
            value=value,
        )
        assert got == pytest.approx(max(float(closed[0]), 1.0), rel=1e-6)


def test_a_target_at_the_floor_is_unreachable(tpp_vectors: dict[str, Any]) -> None:
    case = tpp_vectors["recommend"][0]
    with pytest.raises(UnreachableTarget) as info:
        recommend(
            "p2-tpp",
            case["law"],
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule="target",
            target_loss=case["floor_loss"],
        )
    assert info.value.floor_loss == pytest.approx(case["floor_loss"], rel=1e-9)


def test_a_fit_recovers_the_synthetic_law_out_of_sample() -> None:
    rows = tpp_rows(seed=5)
    data = Dataset.from_rows(rows)
    truth = np.array([r.true_loss for r in rows])
    result = fit("p2-tpp", data, holdout="N0")
    assert result.converged
    assert set(result.params) == set(get_form("p2-tpp").param_names)
    assert result.holdout_metrics is not None and result.holdout_metrics.mape < 0.2
    predicted = get_form("p2-tpp").predict(result.params, data.x)
    assert np.max(np.abs(predicted / truth - 1)) < 0.01


@pytest.mark.parametrize("tokens", [1.0, 1e-3, 1e30])
def test_predictions_stay_finite_at_extreme_inputs(tokens: float) -> None:
    params = {"N_C": 1e3, "D_C": 1e3, "E": 0.0, "alpha": 3, "beta": 3, "gamma": -3, "T_s": 0.0}
    x = Features(
        np.array([1e3, 1e12]),
        np.array([1e-6, 0.999]),
        np.array([0.01, 20.0]),
        np.array([tokens, tokens]),
    )
    law = get_form("p2-tpp")
    assert np.all(np.isfinite(law.predict(params, x)))
    assert np.all(np.isfinite(law.floor(params, x)))
