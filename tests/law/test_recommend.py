"""Recommendation rules (§7): certified values, numeric path, caps, errors, intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from app.law.errors import LawError, UnreachableTarget
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.law.recommend import loss_curve, numeric_tokens, recommend
from app.law.types import Features, FitResult

LAW = {"N_C": 0.5, "D_C": 0.02, "E": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": -0.8, "delta": 0.1}
POINT = {"n0": 1e9, "rho": 0.25, "l0": 2.5}


def _law(
    form: str, params: Mapping[str, float], refits: Sequence[Mapping[str, float]] = ()
) -> FittedLaw:
    return FittedLaw(get_form(form), params, tuple(refits))


def test_every_certified_recommendation_is_reproduced(vectors: dict[str, Any]) -> None:
    for case in vectors["recommend"]:
        got = recommend(
            _law("p2", case["law"]),
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
        assert not got.capped


def test_numeric_root_finder_agrees_with_the_closed_form(vectors: dict[str, Any]) -> None:
    for case in vectors["recommend"]:
        value = case.get("threshold", case.get("target_loss"))
        got = numeric_tokens(
            "p2",
            case["law"],
            n0=case["n0"],
            rho=case["rho"],
            l0=case["l0"],
            rule=case["rule"],
            value=value,
        )
        assert got == pytest.approx(case["tokens"], rel=1e-6)


def test_rules_mean_what_they_say_for_a_numeric_form() -> None:
    params = {"a": 1.0, "b": 0.5, "c": 1.5}
    law = get_form("compression")
    target = 2.85
    rec = recommend(_law("compression", params), **POINT, rule="target", target_loss=target)

    def loss(tokens: float) -> float:
        x = Features(np.array([1e9]), np.array([0.25]), np.array([2.5]), np.array([tokens]))
        return float(law.predict(params, x)[0])

    assert loss(rec.tokens) == pytest.approx(target, rel=1e-9)
    assert loss(rec.tokens * 0.99) > target
    gap = recommend(_law("compression", params), **POINT, rule="gap", threshold=0.01)
    assert loss(gap.tokens) - gap.floor_loss == pytest.approx(0.01, rel=1e-6)


def test_curve_form_recommends_for_a_fitted_run() -> None:
    params = {"E@a": 2.0, "B@a": 0.1, "beta@a": 0.5, "n0@a": 1e9, "rho@a": 0.25, "l0@a": 2.5}
    rec = recommend(_law("curve", params), **POINT, rule="gap", threshold=0.01)
    # 0.1 · D^(−0.5) = 0.01 at D = 100 billion tokens.
    assert rec.tokens == pytest.approx(1e11, rel=1e-6)
    assert rec.floor_loss == 2.0


def test_max_tokens_caps_and_says_so() -> None:
    free = recommend(_law("p2", LAW), **POINT, rule="gap", threshold=0.01)
    capped = recommend(_law("p2", LAW), **POINT, rule="gap", threshold=0.01, max_tokens=1e8)
    assert free.tokens > 1e8
    assert capped.capped and capped.tokens == 1e8
    assert capped.predicted_loss > free.predicted_loss
    roomy = recommend(_law("p2", LAW), **POINT, rule="gap", threshold=0.01, max_tokens=1e12)
    assert not roomy.capped and roomy.tokens == pytest.approx(free.tokens)


def test_target_at_or_below_the_floor_is_unreachable_with_the_floor() -> None:
    floor = recommend(_law("p2", LAW), **POINT, rule="gap", threshold=0.01).floor_loss
    with pytest.raises(UnreachableTarget, match=f"{floor:.6g}") as info:
        recommend(_law("p2", LAW), **POINT, rule="target", target_loss=floor - 0.01)
    assert info.value.floor_loss == pytest.approx(floor)


def test_missing_threshold_or_target_is_a_law_error() -> None:
    with pytest.raises(LawError, match="threshold"):
        recommend(_law("p2", LAW), **POINT, rule="marginal")
    with pytest.raises(LawError, match="target_loss"):
        recommend(_law("p2", LAW), **POINT, rule="target")
    with pytest.raises(LawError, match="positive"):
        recommend(_law("p2", LAW), **POINT, rule="gap", threshold=-1.0)


def test_tokens_interval_from_refits_brackets_the_spread(fitted: FitResult) -> None:
    from app.law.synthetic import SYNTHETIC_P2

    refits = [
        fitted.params,
        SYNTHETIC_P2["depth"],
        {**fitted.params, "beta": fitted.params["beta"] * 1.1},
    ]
    rec = recommend(
        _law("p2", fitted.params, refits), **POINT, rule="gap", threshold=0.01, level=0.8
    )
    assert rec.tokens_interval is not None
    lo, hi = rec.tokens_interval
    singles = [recommend(_law("p2", p), **POINT, rule="gap", threshold=0.01).tokens for p in refits]
    assert min(singles) <= lo <= hi <= max(singles)


def test_loss_curve_falls_with_tokens_and_carries_a_band(fitted: FitResult) -> None:
    tokens = np.geomspace(1e7, 1e10, 20)
    loss, lower, upper = loss_curve(_law("p2", fitted.params), **POINT, tokens=tokens)
    assert lower is None and upper is None
    assert np.all(np.diff(loss) < 0)
    refits = [fitted.params, {**fitted.params, "D_C": fitted.params["D_C"] * 1.2}]
    loss, lower, upper = loss_curve(
        _law("p2", fitted.params, refits), **POINT, tokens=tokens, level=0.9
    )
    assert lower is not None and upper is not None
    assert np.all(lower <= upper)
