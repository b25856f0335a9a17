"""Choosing the law of a request, and the cache of stored fits.

Fits are immutable rows with ids that are never reused, so their content is cached by id; which
fit a request names (a family's default, whether an id still exists) is read from the database
on every request. Writes below go through an engine of their own, as another worker process's
would: nothing tells this process's cache about them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, delete

from app.core.config import get_settings
from app.core.errors import NotFound, Unprocessable
from app.db.migrate import upgrade
from app.db.models.fit import Fit
from app.db.session import create_engine_for, reset_engines, session_scope
from app.law.errors import LawError
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.repositories import fits as fits_repo
from app.schemas.predict import LawChoice
from app.services import lawref
from app.services.lawref import LawRef, _FitCache, fit_cache, resolve_law

P2 = {"N_C": 0.5, "D_C": 0.02, "E": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": -0.8, "delta": 0.1}


def _ref(fit_id: str) -> LawRef:
    return LawRef(law=FittedLaw(get_form("p2"), {}), fit_id=fit_id)


def test_cache_keeps_the_most_recently_used_fits() -> None:
    cache = _FitCache(2)
    cache.put(_ref("a"))
    cache.put(_ref("b"))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put(_ref("c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


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
    assert ref.law.form.name == "p2" and ref.fit_id is None and ref.law.ranges is None


# --- stored fits, on both backends ---


@pytest.fixture
def other(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated database as the app's DATABASE_URL, and an engine of its own to write it."""
    upgrade(db_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    reset_engines()
    fit_cache.clear()
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()
    fit_cache.clear()


def _store(
    engine: Engine, params: dict[str, float], *, default: bool, method: str = "depth"
) -> str:
    """A fit row with `params` and 5 refits scaled from them; its id."""
    rng = np.random.default_rng(len(params) + int(1e6 * params["beta"]))
    refits = [{k: v * float(rng.uniform(0.9, 1.1)) for k, v in params.items()} for _ in range(5)]
    fit = Fit(
        form="p2",
        family="fam",
        method=method,
        params=params,
        objective=0.0,
        converged=True,
        n_starts=1,
        n_observations=10,
        n_runs=2,
        metrics={},
        ranges={},
        bootstrap=refits,
        selection={"kept": "p2"},
    )
    with session_scope(engine) as session:
        fits_repo.add(session, fit)
        if default:
            fits_repo.set_default(session, fit)
        return fit.id


def _make_default(engine: Engine, fit_id: str) -> None:
    with session_scope(engine) as session:
        fit = fits_repo.get(session, fit_id)
        assert fit is not None
        fits_repo.set_default(session, fit)


DEFAULT = LawChoice(family="fam", method="depth")


def test_a_new_default_answers_the_very_next_request(other: Engine) -> None:
    first = _store(other, P2, default=True)
    cached = resolve_law(DEFAULT)
    assert cached.fit_id == first and fit_cache.get(first) is cached
    second = _store(other, {**P2, "beta": 0.6}, default=True)
    now = resolve_law(DEFAULT)
    assert now.fit_id == second and now.law.params["beta"] == 0.6
    _make_default(other, first)
    again = resolve_law(DEFAULT)
    assert again is cached  # the first fit's content, from the cache


def test_each_fit_id_is_answered_with_its_own_content(other: Engine) -> None:
    ids = [_store(other, {**P2, "beta": beta}, default=False) for beta in (0.4, 0.5, 0.6)]
    for _ in range(2):  # loaded, then cached
        for fit_id, beta in zip(ids, (0.4, 0.5, 0.6), strict=True):
            ref = resolve_law(LawChoice(fit_id=fit_id))
            assert ref.fit_id == fit_id and ref.law.params["beta"] == beta
            with session_scope(other) as session:
                row = fits_repo.get(session, fit_id)
                assert row is not None
                expected = get_form("p2").params_matrix(row.bootstrap)
            assert ref.law.refits == tuple(row.bootstrap)
            np.testing.assert_array_equal(ref.law.refit_thetas, expected)
            assert ref.selection == {"kept": "p2"}


def test_a_fit_is_read_once_then_served_from_the_cache(
    other: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_id = _store(other, P2, default=True)
    reads: list[str] = []
    real_get = fits_repo.get

    def counting_get(session: Any, wanted: str) -> Fit | None:
        reads.append(wanted)
        return real_get(session, wanted)

    monkeypatch.setattr(fits_repo, "get", counting_get)
    refs = [resolve_law(DEFAULT) for _ in range(3)]
    refs += [resolve_law(LawChoice(fit_id=fit_id)) for _ in range(2)]
    assert reads == [fit_id]
    assert all(ref is refs[0] for ref in refs)
    thetas = refs[0].law.refit_thetas
    assert thetas is not None and not thetas.flags.writeable


def test_a_fit_gone_from_the_database_is_not_answered_from_the_cache(other: Engine) -> None:
    fit_id = _store(other, P2, default=True)
    resolve_law(DEFAULT)
    assert fit_cache.get(fit_id) is not None
    with other.begin() as connection:
        connection.execute(delete(Fit).where(Fit.id == fit_id))
    with pytest.raises(Unprocessable, match="no default fit"):
        resolve_law(DEFAULT)
    with pytest.raises(NotFound, match=fit_id):
        resolve_law(LawChoice(fit_id=fit_id))
    assert fit_cache.get(fit_id) is None


def test_the_cache_holds_at_most_its_size_and_reloads_what_it_dropped(
    other: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _FitCache(2)
    monkeypatch.setattr(lawref, "fit_cache", small)
    ids = [_store(other, {**P2, "beta": 0.3 + 0.1 * i}, default=False) for i in range(4)]
    for fit_id in ids:
        resolve_law(LawChoice(fit_id=fit_id))
        assert len(small) <= 2
    assert small.get(ids[0]) is None and small.get(ids[3]) is not None
    assert resolve_law(LawChoice(fit_id=ids[0])).law.params["beta"] == pytest.approx(0.3)
