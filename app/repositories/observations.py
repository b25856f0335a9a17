"""Queries on observed losses. Functions take a session, flush when they write, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models.observation import Observation

#: Rows per INSERT statement: 13 bound values a row stays far below SQLite's 32,766 and
#: PostgreSQL's 65,535 parameter limits while keeping round trips few.
CHUNK_ROWS = 500

#: Columns a caller must give for every row.
REQUIRED_COLUMNS = ("run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss")
#: Columns with a default when a row leaves them out.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "protocol": "",
    "source": "api",
    "excluded": False,
    "note": None,
}
#: Columns an upsert overwrites on an existing (run_id, tokens).
UPDATED_COLUMNS = (
    "family",
    "method",
    "n0",
    "rho",
    "l0",
    "loss",
    "protocol",
    "source",
    "excluded",
    "note",
)
_KEY = ("run_id", "tokens")


def _normalise(rows: Sequence[Mapping[str, Any]], keep: str) -> list[dict[str, Any]]:
    """Complete rows with defaults and drop repeated (run_id, tokens) keys within the batch.

    ``keep="first"`` keeps the first copy (insert-ignore semantics: the stored point wins),
    ``keep="last"`` the last one (upsert semantics: the newest value wins). PostgreSQL refuses
    an upsert that touches one row twice, so the batch must be unique before it is sent.
    """
    now = utcnow()
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for index, row in enumerate(rows):
        missing = [name for name in REQUIRED_COLUMNS if row.get(name) is None]
        if missing:
            raise ValueError(f"observation {index}: missing {', '.join(missing)}")
        values = {name: row[name] for name in REQUIRED_COLUMNS}
        for name, default in OPTIONAL_DEFAULTS.items():
            value = row.get(name)
            values[name] = default if value is None else value
        values["created_at"] = now
        key = (values["run_id"], float(values["tokens"]))
        if keep == "last" or key not in unique:
            unique.pop(key, None)
            unique[key] = values
    return list(unique.values())


def _insert_for(session: Session) -> Any:
    """The dialect's INSERT construct, which has ``on_conflict_do_*`` (sqlite or postgresql)."""
    name = session.get_bind().dialect.name
    if name == "sqlite":
        return sqlite.insert
    if name == "postgresql":
        return postgresql.insert
    raise NotImplementedError(f"observations store does not support the {name} dialect")


def _execute_chunks(session: Session, statements: Sequence[Insert]) -> int:
    """Run each statement and count the rows it reports back through RETURNING."""
    written = 0
    for statement in statements:
        written += len(session.execute(statement.returning(Observation.id)).all())
    return written


def insert_ignore(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert observations, skipping any (run_id, tokens) already stored or repeated in ``rows``.

    Returns how many rows were stored; ``len(rows) - inserted`` are the duplicates.
    """
    values = _normalise(rows, keep="first")
    insert = _insert_for(session)
    statements = [
        insert(Observation)
        .values(values[start : start + CHUNK_ROWS])
        .on_conflict_do_nothing(index_elements=list(_KEY))
        for start in range(0, len(values), CHUNK_ROWS)
    ]
    inserted = _execute_chunks(session, statements)
    session.flush()
    return inserted


def upsert(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert observations or overwrite the values of a stored (run_id, tokens).

    A job resumed from a checkpoint re-records its points this way. Within ``rows`` the last
    copy of a key wins. Returns the number of rows inserted or updated.
    """
    values = _normalise(rows, keep="last")
    insert = _insert_for(session)
    statements = []
    for start in range(0, len(values), CHUNK_ROWS):
        statement = insert(Observation).values(values[start : start + CHUNK_ROWS])
        statements.append(
            statement.on_conflict_do_update(
                index_elements=list(_KEY),
                set_={name: statement.excluded[name] for name in UPDATED_COLUMNS},
            )
        )
    session.flush()
    written = _execute_chunks(session, statements)
    # Observations already loaded in this session would otherwise keep their old values;
    # other objects are left alone (expiring them would break reads after the session closes).
    for instance in list(session.identity_map.values()):
        if isinstance(instance, Observation):
            session.expire(instance)
    return written


def delete_after(session: Session, run_id: str, tokens: float) -> int:
    """Delete the points of ``run_id`` recorded after ``tokens``; returns how many went."""
    # "fetch" removes the deleted rows from the session too (one RETURNING, no extra query).
    result = session.execute(
        delete(Observation)
        .where(Observation.run_id == run_id, Observation.tokens > tokens)
        .execution_options(synchronize_session="fetch")
    )
    session.flush()
    return int(getattr(result, "rowcount", 0))


def _filtered(family: str | None, method: str | None, run_ids: Sequence[str] | None) -> list[Any]:
    conditions: list[Any] = []
    if family is not None:
        conditions.append(Observation.family == family)
    if method is not None:
        conditions.append(Observation.method == method)
    if run_ids is not None:
        conditions.append(Observation.run_id.in_(list(run_ids)))
    return conditions


def list_page(
    session: Session,
    *,
    family: str | None = None,
    method: str | None = None,
    run_id: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Observation], int]:
    """One page of observations ordered by (run_id, tokens), and the total matching count."""
    conditions = _filtered(family, method, None if run_id is None else [run_id])
    total = session.scalar(select(func.count()).select_from(Observation).where(*conditions))
    page = session.scalars(
        select(Observation)
        .where(*conditions)
        .order_by(Observation.run_id, Observation.tokens, Observation.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return list(page), int(total or 0)


def select_for_fit(
    session: Session,
    *,
    family: str | None = None,
    method: str | None = None,
    run_ids: Sequence[str] | None = None,
    include_excluded: bool = False,
) -> list[Observation]:
    """The observations a fit uses, ordered by (run_id, tokens); excluded points only if asked."""
    conditions = _filtered(family, method, run_ids)
    if not include_excluded:
        conditions.append(Observation.excluded.is_(False))
    return list(
        session.scalars(
            select(Observation).where(*conditions).order_by(Observation.run_id, Observation.tokens)
        ).all()
    )


def count_by_run(session: Session, run_id: str) -> int:
    """How many points run ``run_id`` has stored."""
    total = session.scalar(
        select(func.count()).select_from(Observation).where(Observation.run_id == run_id)
    )
    return int(total or 0)
