"""Choosing the law of a request, and the fit cache."""

from __future__ import annotations

import pytest

from app.core.errors import Unprocessable
from app.law.errors import LawError
from app.law.forms import get_form
from app.schemas.predict import LawChoice
from app.services.lawref import LawRef, _FitCache, resolve_law


def _ref(fit_id: str) -> LawRef:
    return LawRef(form=get_form("p2"), params={}, fit_id=fit_id)


def test_cache_keeps_the_most_recently_used_fits() -> None:
    cache = _FitCache(2)
    cache.put(_ref("a"))
    cache.put(_ref("b"))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put(_ref("c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_a_request_without_a_law_says_how_to_choose_one() -> None:
    with pytest.raises(Unprocessable, match="fit_id"):
        resolve_law(LawChoice(family="f"))


def test_an_inline_law_needs_no_database_and_its_parameters_are_checked() -> None:
    params = {"N_C": 0.5, "D_C": 0.02, "E": 0.05, "alpha": 0.3, "beta": 0.5}
    choice = LawChoice.model_validate({"law": {"form": "p2", "params": params}})
    with pytest.raises(LawError, match="missing gamma, delta"):
        resolve_law(choice)
    full = {**params, "gamma": -0.8, "delta": 0.1}
    ref = resolve_law(LawChoice.model_validate({"law": {"form": "p2", "params": full}}))
    assert ref.form.name == "p2" and ref.fit_id is None and ref.ranges is None
