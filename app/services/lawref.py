"""Which law answers a prediction: a stored fit (by id or as a family/method default) or an
inline law. Stored fits never change after they are written (only their default flag does),
so their parameters, refits and ranges are cached by id: the /predict hot path then touches
the database only for an unseen fit or a default lookup."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.db.models.fit import Fit
from app.db.session import session_scope
from app.law.forms import Form, get_form
from app.law.intervals import Calibration
from app.law.types import Ranges
from app.repositories import fits as fits_repo
from app.schemas.predict import LawChoice
from app.services.convert import ranges_from_dict

#: Fits kept in memory; each holds its bootstrap refits (up to 1,000 small dicts).
CACHE_SIZE = 128


@dataclass(frozen=True)
class LawRef:
    """A law ready to evaluate, with what it was fitted on when it is a stored fit."""

    form: Form
    params: Mapping[str, float]
    fit_id: str | None = None
    family: str | None = None
    method: str | None = None
    protocol: str | None = None
    refits: tuple[Mapping[str, float], ...] = ()
    ranges: Ranges | None = None
    calibration: Calibration | None = None


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

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


fit_cache = _FitCache(CACHE_SIZE)


def law_from_fit(fit: Fit) -> LawRef:
    """A stored fit as a `LawRef` (and remember it)."""
    ref = LawRef(
        form=get_form(fit.form),
        params=dict(fit.params),
        fit_id=fit.id,
        family=fit.family,
        method=fit.method,
        protocol=fit.protocol,
        refits=tuple(dict(p) for p in (fit.bootstrap or [])),
        ranges=ranges_from_dict(fit.ranges) if fit.ranges else None,
        calibration=Calibration.from_dict(fit.calibration) if fit.calibration else None,
    )
    fit_cache.put(ref)
    return ref


def _from_session(session: Session, choice: LawChoice) -> LawRef:
    if choice.fit_id is not None:
        fit = fits_repo.get(session, choice.fit_id)
        if fit is None:
            raise NotFound(f"no fit with id {choice.fit_id!r}")
        return law_from_fit(fit)
    fit = fits_repo.get_default(session, choice.family, choice.method)
    if fit is None:
        raise Unprocessable(
            f"no default fit for family={choice.family!r}, method={choice.method!r}: "
            "create one with POST /fits (make_default=true), or pass `fit_id` or `law`"
        )
    cached = fit_cache.get(fit.id)
    return cached if cached is not None else law_from_fit(fit)


def resolve_law(choice: LawChoice, session: Session | None = None) -> LawRef:
    """The law a request names: `law` inline, `fit_id`, or the default of family+method.

    Without a session one is opened only when the database must be read.
    """
    if choice.law is not None:
        form = get_form(choice.law.form)
        form.check_params(choice.law.params)
        return LawRef(form=form, params=dict(choice.law.params))
    if choice.fit_id is not None:
        cached = fit_cache.get(choice.fit_id)
        if cached is not None:
            return cached
    elif choice.family is None or choice.method is None:
        raise Unprocessable(
            "choose a law: give `fit_id` (a stored fit), `law` ({form, params} inline), or "
            "both `family` and `method` to use their default fit"
        )
    if session is not None:
        return _from_session(session, choice)
    with session_scope() as own:
        return _from_session(own, choice)
