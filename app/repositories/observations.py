"""Queries on observed losses. Functions take a session, flush when they write, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models.observation import Observation

#: Columns a caller must give for every row.
REQUIRED_COLUMNS = ("run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss")
#: Columns with a default when a row leaves them out.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "protocol": "",
    "source": "api",
    "recipe": "full",
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
    "recipe",
    "excluded",
    "note",
)
_KEY = ("run_id", "tokens")
_TABLE: Table = Observation.__table__  # type: ignore[assignment]


_FLOAT_COLUMNS = ("n0", "rho", "l0", "tokens", "loss")
_STR_COLUMNS = ("run_id", "family", "method", "protocol", "source", "recipe")
#: Column order of a written row (everything but the generated id).
_WRITTEN = (*REQUIRED_COLUMNS, *OPTIONAL_DEFAULTS)
#: `source` of the observations shipped with the service (app/reference/).
REFERENCE_SOURCE = "reference"
#: Columns whose span a family summary reports.
_SPANNED = (Observation.n0, Observation.rho, Observation.l0, Observation.tokens)
#: Rows per statement on PostgreSQL: bounds the size of the array parameters in one round trip.
PG_CHUNK_ROWS = 50_000


def _normalise(rows: Sequence[Mapping[str, Any]], keep: str) -> list[dict[str, Any]]:
    """Complete rows with defaults, coerce types and drop repeated (run_id, tokens) keys.

    ``keep="first"`` keeps the first copy (insert-ignore semantics: the stored point wins),
    ``keep="last"`` the last one (upsert semantics: the newest value wins). PostgreSQL refuses
    an upsert that touches one row twice, so the batch must be unique before it is sent.
    """
    unique: dict[tuple[str, float], dict[str, Any]] = {}
    for index, row in enumerate(rows):
        missing = [name for name in REQUIRED_COLUMNS if row.get(name) is None]
        if missing:
            raise ValueError(f"observation {index}: missing {', '.join(missing)}")
        values = {name: row[name] for name in REQUIRED_COLUMNS}
        for name, default in OPTIONAL_DEFAULTS.items():
            value = row.get(name)
            values[name] = default if value is None else value
        for name in _FLOAT_COLUMNS:
            values[name] = float(values[name])
        for name in _STR_COLUMNS:
            values[name] = str(values[name])
        values["excluded"] = bool(values["excluded"])
        key = (values["run_id"], values["tokens"])
        if keep == "last" or key not in unique:
            unique.pop(key, None)
            unique[key] = values
    return list(unique.values())


def _on_conflict(statement: Any, keep: str) -> Any:
    if keep == "first":
        return statement.on_conflict_do_nothing(index_elements=list(_KEY))
    return statement.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={name: statement.excluded[name] for name in UPDATED_COLUMNS},
    )


def _write_sqlite(session: Session, values: list[dict[str, Any]], keep: str) -> int:
    # One statement with a list of parameter sets: SQLAlchemy's "insertmanyvalues" batches it
    # into multi-row INSERTs with one cached compiled form (~25k rows/s here).
    now = utcnow()
    for row in values:
        row["created_at"] = now
    statement = _on_conflict(sqlite.insert(_TABLE), keep).returning(_TABLE.c.id)
    return len(session.execute(statement, values).all())


def _write_postgresql(session: Session, values: list[dict[str, Any]], keep: str) -> int:
    # INSERT ... SELECT FROM unnest(<one array per column>): a short, cached statement whatever
    # the row count. Multi-row VALUES with ~13 bound values a row made psycopg re-parse a huge
    # query text on every batch (~3k rows/s against ~20k rows/s this way).
    table_types = {name: _TABLE.c[name].type for name in _WRITTEN}
    arrays = func.unnest(
        *[bindparam(name, type_=postgresql.ARRAY(table_types[name])) for name in _WRITTEN]
    )
    source = arrays.table_valued(*_WRITTEN).render_derived()
    select_rows = select(
        *[source.c[name] for name in _WRITTEN],
        bindparam("created_at", type_=_TABLE.c.created_at.type),
    )
    statement = _on_conflict(
        postgresql.insert(_TABLE).from_select([*_WRITTEN, "created_at"], select_rows), keep
    ).returning(_TABLE.c.id)
    now = utcnow()
    written = 0
    for start in range(0, len(values), PG_CHUNK_ROWS):
        chunk = values[start : start + PG_CHUNK_ROWS]
        parameters: dict[str, Any] = {name: [row[name] for row in chunk] for name in _WRITTEN}
        parameters["created_at"] = now
        written += len(session.execute(statement, parameters).all())
    return written


def _write(session: Session, rows: Sequence[Mapping[str, Any]], keep: str) -> int:
    """Insert ``rows`` with the dialect's ON CONFLICT; count the rows RETURNING reports."""
    values = _normalise(rows, keep)
    if not values:
        return 0
    session.flush()
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        written = _write_sqlite(session, values, keep)
    elif dialect == "postgresql":
        written = _write_postgresql(session, values, keep)
    else:
        raise NotImplementedError(f"observations store does not support the {dialect} dialect")
    if keep == "last":
        # Observations already loaded in this session would keep their old values; other
        # objects are left alone (expiring them would break reads after the session closes).
        for instance in list(session.identity_map.values()):
            if isinstance(instance, Observation):
                session.expire(instance)
    return written


def insert_ignore(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert observations, skipping any (run_id, tokens) already stored or repeated in ``rows``.

    Returns how many rows were stored; ``len(rows) - inserted`` are the duplicates.
    """
    return _write(session, rows, keep="first")


def upsert(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert observations or overwrite the values of a stored (run_id, tokens).

    A job resumed from a checkpoint re-records its points this way. Within ``rows`` the last
    copy of a key wins. Returns the number of rows inserted or updated.
    """
    return _write(session, rows, keep="last")


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


def _filtered(
    family: str | None,
    method: str | None,
    run_ids: Sequence[str] | None,
    recipe: str | None = None,
) -> list[Any]:
    conditions: list[Any] = []
    if family is not None:
        conditions.append(Observation.family == family)
    if method is not None:
        conditions.append(Observation.method == method)
    if recipe is not None:
        conditions.append(Observation.recipe == recipe)
    if run_ids is not None:
        conditions.append(Observation.run_id.in_(list(run_ids)))
    return conditions


def list_page(
    session: Session,
    *,
    family: str | None = None,
    method: str | None = None,
    run_id: str | None = None,
    recipe: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Observation], int]:
    """One page of observations ordered by (run_id, tokens), and the total matching count."""
    conditions = _filtered(family, method, None if run_id is None else [run_id], recipe)
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
    recipe: str | None = None,
) -> list[Observation]:
    """The observations a fit uses, ordered by (run_id, tokens); excluded points only if asked;
    of one recipe when `recipe` is given."""
    conditions = _filtered(family, method, run_ids, recipe)
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


def other_runs(
    session: Session,
    *,
    family: str,
    method: str,
    protocol: str,
    run_id: str,
    recipe: str = "full",
) -> list[Observation]:
    """The kept observations of ``family``/``method``/``recipe`` under ``protocol`` from runs
    other than ``run_id``, ordered by (run_id, tokens): what a job's early stop learns from."""
    return list(
        session.scalars(
            select(Observation)
            .where(
                Observation.family == family,
                Observation.method == method,
                Observation.protocol == protocol,
                Observation.recipe == recipe,
                Observation.run_id != run_id,
                Observation.excluded.is_(False),
            )
            .order_by(Observation.run_id, Observation.tokens)
        ).all()
    )


def family_method_summaries(session: Session, family: str | None = None) -> list[dict[str, Any]]:
    """Per (family, method, recipe) of the kept observations (of `family` only, when given): runs,
    points, the span of n0, rho, l0 and tokens, how many points came from the shipped reference
    data, and the protocols; ordered by family and method. Grouped queries, however many
    observations there are. Ordered by family, method and recipe."""
    kept = [*_filtered(family, None, None), Observation.excluded.is_(False)]
    spans = [func.min(column).label(f"{column.key}_lo") for column in _SPANNED] + [
        func.max(column).label(f"{column.key}_hi") for column in _SPANNED
    ]
    rows = session.execute(
        select(
            Observation.family,
            Observation.method,
            Observation.recipe,
            func.count(func.distinct(Observation.run_id)).label("n_runs"),
            func.count().label("n_observations"),
            func.sum(case((Observation.source == REFERENCE_SOURCE, 1), else_=0)).label(
                "n_reference"
            ),
            *spans,
        )
        .where(*kept)
        .group_by(Observation.family, Observation.method, Observation.recipe)
        .order_by(Observation.family, Observation.method, Observation.recipe)
    ).all()
    protocols: dict[tuple[str, str, str], list[str]] = {}
    for name, method, recipe, protocol in session.execute(
        select(Observation.family, Observation.method, Observation.recipe, Observation.protocol)
        .where(*kept)
        .distinct()
        .order_by(Observation.family, Observation.method, Observation.recipe, Observation.protocol)
    ).all():
        protocols.setdefault((name, method, recipe), []).append(protocol)
    return [
        {
            **row._asdict(),
            "n_reference": int(row.n_reference or 0),
            "protocols": protocols.get((row.family, row.method, row.recipe), []),
        }
        for row in rows
    ]


def count_all(session: Session) -> int:
    """How many observations are stored (excluded ones included)."""
    return int(session.scalar(select(func.count()).select_from(Observation)) or 0)
