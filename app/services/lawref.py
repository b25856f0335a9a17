"""Which law answers a prediction: a stored fit (by id or as a family/method/recipe default)
or an inline law.

Stored fits never change after they are written (only their default flag does) and their ids
are random and never reused, so what a prediction needs from a fit is parsed once and kept in a
per-process LRU by id (`fit_cache`): the fitted law (`FittedLaw`: form, parameters, refits as
dicts and as one matrix, calibration, ranges) and the fit's selection. Which fit a request
names is still read from the database on every request, as one indexed query for the id alone:
the database is the only place every worker process sees, so a new default answers the very
next request in every worker, and a fit that is no longer there is never answered from the
cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.db.models.fit import Fit
from app.db.session import session_scope
from app.law.law import FittedLaw
from app.repositories import fits as fits_repo
from app.schemas.predict import LawChoice
from app.services.convert import fitted_law, law_of_fit

#: Fits kept in memory; each holds its bootstrap refits (up to 1,000 small dicts).
CACHE_SIZE = 128


@dataclass(frozen=True)
class LawRef:
    """A law ready to evaluate, with the stored fit it comes from (None for an inline law)."""

    law: FittedLaw
    fit_id: str | None = None
    family: str | None = None
    method: str | None = None
    protocol: str | None = None
    selection: Mapping[str, Any] | None = None
    recipe: str | None = None


class _FitCache:
    """A small thread-safe LRU of stored fits by id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, LawRef] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, fit_id: str) -> LawRef | None:
        with self._lock:
            ref = self._items.get(fit_id)
            if ref is not None:
                self._items.move_to_end(fit_id)
            return ref

    def put(self, ref: LawRef) -> None:
        assert ref.fit_id is not None
        with self._lock:
            self._items[ref.fit_id] = ref
            self._items.move_to_end(ref.fit_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def discard(self, fit_id: str) -> None:
        with self._lock:
            self._items.pop(fit_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


fit_cache = _FitCache(CACHE_SIZE)


def law_from_fit(fit: Fit) -> LawRef:
    """A stored fit as a `LawRef`, parsed once (and remembered by id)."""
    ref = LawRef(
        law=law_of_fit(fit),
        fit_id=fit.id,
        family=fit.family,
        method=fit.method,
        protocol=fit.protocol,
        selection=dict(fit.selection) if fit.selection else None,
        recipe=fit.recipe,
    )
    fit_cache.put(ref)
    return ref


def _gone(fit_id: str) -> NotFound:
    fit_cache.discard(fit_id)
    return NotFound(f"no fit with id {fit_id!r}")


def _no_default(choice: LawChoice) -> Unprocessable:
    return Unprocessable(
        f"no default fit for family={choice.family!r}, method={choice.method!r}, "
        f"recipe={choice.recipe!r}: create one with POST /fits (make_default=true), or pass "
        "`fit_id` or `law`"
    )


def _same_recipe(choice: LawChoice, ref: LawRef) -> LawRef:
    """`ref`, or a 422 when the request names a recipe and `ref` is a stored fit of another:
    a law fitted on one recipe's runs does not answer for another's."""
    if (
        ref.fit_id is not None
        and "recipe" in choice.model_fields_set
        and ref.recipe != choice.recipe
    ):
        raise Unprocessable(
            f"fit {ref.fit_id!r} was fitted on recipe {ref.recipe!r} observations, not "
            f"{choice.recipe!r}: a fit never answers for another recovery recipe; pass its "
            f"recipe, or leave out fit_id to use the default fit of recipe {choice.recipe!r}"
        )
    return ref


def _current_id(session: Session | None, choice: LawChoice) -> str:
    """The id of the fit `choice` names as the database has it now (one indexed query)."""
    if choice.fit_id is not None:
        if not fits_repo.exists(session, choice.fit_id):
            raise _gone(choice.fit_id)
        return choice.fit_id
    assert choice.family is not None and choice.method is not None
    fit_id = fits_repo.default_id(session, choice.family, choice.method, choice.recipe)
    if fit_id is None:
        raise _no_default(choice)
    return fit_id


def _load(session: Session, fit_id: str) -> LawRef:
    fit = fits_repo.get(session, fit_id)
    if fit is None:
        raise NotFound(f"no fit with id {fit_id!r}")
    return law_from_fit(fit)


def stored_law(fit_id: str, session: Session | None = None) -> LawRef:
    """The stored fit `fit_id`, from the cache or loaded once (the caller knows it exists)."""
    cached = fit_cache.get(fit_id)
    if cached is not None:
        return cached
    if session is not None:
        return _load(session, fit_id)
    with session_scope() as own:
        return _load(own, fit_id)


def resolve_law(choice: LawChoice, session: Session | None = None) -> LawRef:
    """The law a request names: `law` inline, `fit_id`, or the default of family+method.

    A stored fit costs one indexed query for its id (on `session`, or outside any transaction
    without one); its content comes from the cache after the first request.
    """
    if choice.law is not None:
        law = fitted_law(choice.law.form, choice.law.params)
        law.form.check_params(law.params)
        return LawRef(law=law)
    if choice.fit_id is None and (choice.family is None or choice.method is None):
        raise Unprocessable(
            "choose a law: give `fit_id` (a stored fit), `law` ({form, params} inline), or "
            "both `family` and `method` to use their default fit"
        )
    return _same_recipe(choice, stored_law(_current_id(session, choice), session))


def resolve_cached(choice: LawChoice) -> LawRef | None:
    """The stored fit `choice` names when finding it costs no wait, for a caller on an event
    loop: the database says which fit without waiting (`read_scalar_nowait`, SQLite) and the
    fit's content is cached. None otherwise (an inline law, another backend, a lock, a fit not
    yet loaded): the caller then uses `resolve_law` in a worker thread. An unknown fit id or a
    missing default raises as `resolve_law` does.
    """
    if choice.law is not None:
        return None
    if choice.fit_id is not None:
        present = fits_repo.exists_nowait(choice.fit_id)
        if present is None:
            return None
        if not present:
            raise _gone(choice.fit_id)
        cached = fit_cache.get(choice.fit_id)
        return None if cached is None else _same_recipe(choice, cached)
    if choice.family is None or choice.method is None:
        return None
    answered, fit_id = fits_repo.default_id_nowait(choice.family, choice.method, choice.recipe)
    if not answered:
        return None
    if fit_id is None:
        raise _no_default(choice)
    return fit_cache.get(fit_id)
