"""The forms added beside the original four, p2-tpp (P² on tokens per parameter, shifted) and
p2-shift (P² with a shifted token axis): certified values, floor, rules, fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.law.errors import UnreachableTarget
from app.law.fitting import fit
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.law.recommend import numeric_tokens, recommend
from app.law.synthetic import SYNTHETIC_P2, SYNTHETIC_SIZES, SYNTHETIC_TPP, make_rows
from app.law.types import Dataset, Features, HoldOut

VECTORS = Path(__file__).with_name("form_vectors.json")
NEW_FORMS = ("p2-tpp", "p2-shift")


@pytest.fixture(scope="module")
def form_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _x(n0: float, rho: float, l0: float, tokens: float) -> Features:
    return Features(np.array([n0]), np.array([rho]), np.array([l0]), np.array([tokens]))


#: A p2-shift law for synthetic data: P²'s synthetic depth constants with a shift of 2e8 tokens,
#: so that the first checkpoints (from 1e7 tokens) are flat.
SHIFT_LAW = {**SYNTHETIC_P2["depth"], "D_s": 0.2}


def shift_rows(*, seed: int, noise: float = 0.0005) -> list[Any]:
    """Three sizes × three ρ × 12 checkpoints of 1e7–5e9 tokens from SHIFT_LAW (synthetic)."""
    return make_rows(
        params_by_method={"depth": SHIFT_LAW},
        sizes=SYNTHETIC_SIZES[:3],
        n_checkpoints=12,
        noise=noise,
        seed=seed,
        form="p2-shift",
    )


def tpp_rows(*, seed: int, noise: float = 0.001) -> list[Any]:
    """Four sizes × three ρ × 12 checkpoints of 1e7–5e10 tokens from SYNTHETIC_TPP (synthetic)."""
    return make_rows(
        params_by_method={"depth": SYNTHETIC_TPP},
        sizes=SYNTHETIC_SIZES,
        n_checkpoints=12,
        max_tokens=5e10,
        noise=noise,
        seed=seed,
        form="p2-tpp",
    )


@pytest.mark.parametrize("form", NEW_FORMS)
def test_every_certified_prediction_and_floor_is_reproduced(
    form_vectors: dict[str, Any], form: str
) -> None:
    law = get_form(form)
    for case in form_vectors[form]["predict"]:
        x = _x(case["n0"], case["rho"], case["l0"], case["tokens"])
        assert float(law.predict(case["law"], x)[0]) == pytest.approx(case["loss"], rel=1e-9)
        assert float(law.floor(case["law"], x)[0]) == pytest.approx(case["floor_loss"], rel=1e-9)


@pytest.mark.parametrize("form", NEW_FORMS)
def test_the_floor_is_the_large_token_limit(form_vectors: dict[str, Any], form: str) -> None:
    law = get_form(form)
    params = form_vectors[form]["predict"][0]["law"]
    far = law.predict(params, _x(1e9, 0.25, 2.5, 1e40))
    assert far[0] == pytest.approx(law.floor(params, _x(1e9, 0.25, 2.5, 1.0))[0], rel=1e-9)


@pytest.mark.parametrize(
    ("form", "shifted", "unshifted"),
    [
        ("p2-tpp", SYNTHETIC_TPP, {**SYNTHETIC_TPP, "T_s": 0.0}),
        ("p2-shift", SHIFT_LAW, {**SHIFT_LAW, "D_s": 0.0}),
    ],
)
def test_the_shift_flattens_the_start_and_vanishes_later(
    form: str, shifted: dict[str, float], unshifted: dict[str, float]
) -> None:
    law = get_form(form)
    # 1e6 tokens: 0.001 tokens per parameter (T_s is 0.3), 0.001 billion tokens (D_s is 0.2).
    early = _x(1e9, 0.25, 2.5, 1e6)
    late = _x(1e9, 0.25, 2.5, 1e15)
    assert law.predict(shifted, early)[0] < law.predict(unshifted, early)[0] - 0.1
    assert law.predict(shifted, late)[0] == pytest.approx(law.predict(unshifted, late)[0], rel=1e-4)
    # Flat start: the first decade of tokens moves the shifted law far less.
    start = _x(1e9, 0.25, 2.5, 1e7)
    drop_shifted = law.predict(shifted, early)[0] - law.predict(shifted, start)[0]
    drop_unshifted = law.predict(unshifted, early)[0] - law.predict(unshifted, start)[0]
    assert 0 <= drop_shifted < 0.1 * drop_unshifted


@pytest.mark.parametrize("form", NEW_FORMS)
def test_every_certified_recommendation_is_reproduced(
    form_vectors: dict[str, Any], form: str
) -> None:
    for case in form_vectors[form]["recommend"]:
        got = recommend(
            FittedLaw(get_form(form), case["law"]),
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


@pytest.mark.parametrize("form", NEW_FORMS)
def test_the_closed_forms_agree_with_the_numeric_root_finder(
    form_vectors: dict[str, Any], form: str
) -> None:
    law = get_form(form)
    for case in form_vectors[form]["recommend"]:
        value = case.get("threshold", case.get("target_loss"))
        x = _x(case["n0"], case["rho"], case["l0"], 1.0)
        closed = law.closed_form_tokens(case["law"], x, case["rule"], value)
        assert closed is not None
        got = numeric_tokens(
            form,
            case["law"],
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule=case["rule"],
            value=value,
        )
        assert got == pytest.approx(max(float(closed[0]), 1.0), rel=1e-6)


@pytest.mark.parametrize("form", NEW_FORMS)
def test_a_target_at_the_floor_is_unreachable(form_vectors: dict[str, Any], form: str) -> None:
    case = form_vectors[form]["recommend"][0]
    with pytest.raises(UnreachableTarget) as info:
        recommend(
            FittedLaw(get_form(form), case["law"]),
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule="target",
            target_loss=case["floor_loss"],
        )
    assert info.value.floor_loss == pytest.approx(case["floor_loss"], rel=1e-9)


@pytest.mark.parametrize(("form", "holdout"), [("p2-tpp", "N0"), ("p2-shift", "rho")])
def test_a_fit_recovers_the_synthetic_law_out_of_sample(form: str, holdout: HoldOut) -> None:
    rows = tpp_rows(seed=5) if form == "p2-tpp" else shift_rows(seed=5)
    data = Dataset.from_rows(rows)
    truth = np.array([r.true_loss for r in rows])
    result = fit(form, data, holdout=holdout)
    assert result.converged
    assert set(result.params) == set(get_form(form).param_names)
    assert result.holdout_metrics is not None and result.holdout_metrics.mape < 0.2
    predicted = get_form(form).predict(result.params, data.x)
    assert np.max(np.abs(predicted / truth - 1)) < 0.01


@pytest.mark.parametrize("tokens", [1.0, 1e-3, 1e30])
@pytest.mark.parametrize("form", NEW_FORMS)
def test_predictions_stay_finite_at_extreme_inputs(form: str, tokens: float) -> None:
    params = {"N_C": 1e3, "D_C": 1e3, "E": 0.0, "alpha": 3, "beta": 3, "gamma": -3}
    params |= {"T_s": 0.0} if form == "p2-tpp" else {"delta": 3, "D_s": 0.0}
    x = Features(
        np.array([1e3, 1e12]),
        np.array([1e-6, 0.999]),
        np.array([0.01, 20.0]),
        np.array([tokens, tokens]),
    )
    law = get_form(form)
    assert np.all(np.isfinite(law.predict(params, x)))
    assert np.all(np.isfinite(law.floor(params, x)))
