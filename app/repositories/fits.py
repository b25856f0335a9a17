"""Queries on fits. Functions take a session, flush when they write, never commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from app.db.models.fit import Fit
from app.db.session import read_scalar, read_scalar_nowait


def add(session: Session, fit: Fit) -> Fit:
    """Store a new fit (its id and created_at are filled in by the flush)."""
    session.add(fit)
    session.flush()
    return fit


def get(session: Session, fit_id: str) -> Fit | None:
    """The fit with id ``fit_id``, or None."""
    return session.get(Fit, fit_id)


# The two reads of every stored-fit prediction, built once: building a select costs more than
# running it on SQLite (the values are bound at execution).
_EXISTS = select(Fit.id).where(Fit.id == bindparam("fit_id"))
_DEFAULT_ID = (
    select(Fit.id)
    .where(
        Fit.family == bindparam("family"),
        Fit.method == bindparam("method"),
        Fit.recipe == bindparam("recipe"),
        Fit.is_default.is_(True),
    )
    .order_by(Fit.created_at.desc())
    .limit(1)
)


def _read(session: Session | None, statement: Any, params: dict[str, Any]) -> Any:
    # Without a session: one statement outside any transaction, the cheap way (`read_scalar`).
    if session is None:
        return read_scalar(statement, params)
    return session.scalar(statement, params)


def exists(session: Session | None, fit_id: str) -> bool:
    """Whether a fit with id ``fit_id`` is stored (a primary-key lookup of the id alone)."""
    return _read(session, _EXISTS, {"fit_id": fit_id}) is not None


def exists_nowait(fit_id: str) -> bool | None:
    """`exists` read without waiting (`read_scalar_nowait`); None when the database could not
    answer at once."""
    answered, found = read_scalar_nowait(_EXISTS, {"fit_id": fit_id})
    return (found is not None) if answered else None


def _same_group(family: str | None, method: str | None, recipe: str) -> list[Any]:
    # NULL means "any family" / "any method" fit; it forms its own group, matched with IS NULL.
    # A recipe is never "any": a fit is made of one recipe's observations.
    return [
        Fit.family.is_(None) if family is None else Fit.family == family,
        Fit.method.is_(None) if method is None else Fit.method == method,
        Fit.recipe == recipe,
    ]


def list_page(
    session: Session,
    *,
    family: str | None = None,
    method: str | None = None,
    recipe: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Fit], int]:
    """One page of fits, newest first, and the total matching count (filters are optional)."""
    conditions: list[Any] = []
    if family is not None:
        conditions.append(Fit.family == family)
    if method is not None:
        conditions.append(Fit.method == method)
    if recipe is not None:
        conditions.append(Fit.recipe == recipe)
    total = session.scalar(select(func.count()).select_from(Fit).where(*conditions))
    page = session.scalars(
        select(Fit)
        .where(*conditions)
        .order_by(Fit.created_at.desc(), Fit.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return list(page), int(total or 0)


def get_default(
    session: Session, family: str | None, method: str | None, recipe: str = "full"
) -> Fit | None:
    """The default fit of (family, method, recipe); None matches fits stored without a family
    or method."""
    return session.scalars(
        select(Fit)
        .where(*_same_group(family, method, recipe), Fit.is_default.is_(True))
        .order_by(Fit.created_at.desc())
        .limit(1)
    ).first()


def default_id(
    session: Session | None, family: str, method: str, recipe: str = "full"
) -> str | None:
    """The id of the default fit of (family, method, recipe), or None: `get_default` without
    loading the row (the (family, method, is_default) index answers it)."""
    params = {"family": family, "method": method, "recipe": recipe}
    found = _read(session, _DEFAULT_ID, params)
    return None if found is None else str(found)


def default_id_nowait(family: str, method: str, recipe: str = "full") -> tuple[bool, str | None]:
    """`default_id` read without waiting (`read_scalar_nowait`): (answered, id)."""
    params = {"family": family, "method": method, "recipe": recipe}
    answered, found = read_scalar_nowait(_DEFAULT_ID, params)
    return answered, None if found is None else str(found)


def default_ids(session: Session, family: str) -> list[tuple[str, str, str]]:
    """(method, recipe, id) of the default fit of every (method, recipe) of ``family``, newest
    first (the rows themselves come from the fit cache)."""
    rows = session.execute(
        select(Fit.method, Fit.recipe, Fit.id)
        .where(Fit.family == family, Fit.method.is_not(None), Fit.is_default.is_(True))
        .order_by(Fit.created_at.desc(), Fit.id.desc())
    ).all()
    return [(str(method), str(recipe), str(fit_id)) for method, recipe, fit_id in rows]


def set_default(session: Session, fit: Fit) -> None:
    """Make ``fit`` the default of its (family, method, recipe), clearing the flag on the
    others."""
    session.flush()
    session.execute(
        update(Fit)
        .where(
            *_same_group(fit.family, fit.method, fit.recipe),
            Fit.id != fit.id,
            Fit.is_default.is_(True),
        )
        .values(is_default=False)
        .execution_options(synchronize_session="fetch")
    )
    fit.is_default = True
    session.flush()


def defaults(session: Session) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(id, form) of the default fit of every (family, method, recipe) that has one."""
    rows = session.execute(
        select(Fit.family, Fit.method, Fit.recipe, Fit.id, Fit.form)
        .where(Fit.family.is_not(None), Fit.method.is_not(None), Fit.is_default.is_(True))
        .order_by(Fit.created_at.desc(), Fit.id.desc())
    ).all()
    found: dict[tuple[str, str, str], tuple[str, str]] = {}
    for family, method, recipe, fit_id, form in rows:
        found.setdefault((str(family), str(method), str(recipe)), (str(fit_id), str(form)))
    return found


def count_all(session: Session) -> int:
    """How many fits are stored."""
    return int(session.scalar(select(func.count()).select_from(Fit)) or 0)
