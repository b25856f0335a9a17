"""Engines and sessions: the one place that knows how to talk to the database.

SQLite (the default) is tuned for several writer processes (API, workers, CLI) sharing one file:
WAL lets readers run beside a writer, ``busy_timeout`` makes a blocked writer wait instead of
failing, and every transaction starts with ``BEGIN IMMEDIATE`` so the write lock is taken up
front. With a plain (deferred) ``BEGIN`` a read-then-write transaction has to upgrade its lock
and SQLite answers "database is locked" at once, busy timeout or not (docs/reliability.md).
The cost: transactions, read-only ones included, run one at a time against the same file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from app.core.config import get_settings

#: How long a SQLite writer waits for the lock before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _prepare_sqlite_file(url: str) -> None:
    """Create the folder of a file-backed SQLite database (SQLite does not)."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine) -> None:
    """Pragmas on every new connection and ``BEGIN IMMEDIATE`` for every transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy: pysqlite's own implicit BEGIN is deferred
        # and skipped for SELECT, which is exactly the lock-upgrade trap described above.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL is stored in the file; setting it again on later connections is a no-op.
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # In WAL mode NORMAL fsyncs at checkpoints, not at every commit: a killed process
            # loses nothing, a power cut may lose the last commits (never corrupts the file).
            # FULL made the four-writer test about twice as slow.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine_for(url: str) -> Engine:
    """A new engine for ``url`` with the project's settings (not cached; see ``get_engine``)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            },
        )
        _install_sqlite_hooks(engine)
        return engine
    # pool_pre_ping costs one round trip per checkout and saves a 500 after a server restart.
    return create_engine(url, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``DATABASE_URL``), created once per URL."""
    key = url if url is not None else get_settings().database_url
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine_for(key)
            _engines[key] = engine
        return engine


def reset_engines() -> None:
    """Dispose and forget every cached engine (tests call it after changing the settings)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()
    _close_nowait_connections()


def _forget_engines_after_fork() -> None:
    # A forked child (Celery prefork, multiprocessing) must not reuse the parent's pooled
    # connections: drop them without closing them, so the parent's stay valid.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _nowait.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One transaction for a worker or CLI step: commit on success, roll back on error, close."""
    session = make_sessionmaker(engine if engine is not None else get_engine())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_db() -> Generator[Session]:
    """FastAPI dependency: a session for one request. Services commit; this only closes."""
    session = make_sessionmaker(get_engine())()
    try:
        yield session
    finally:
        session.close()


@dataclass(frozen=True)
class _Compiled:
    statement: ClauseElement  # kept so that the id in the key stays this statement's
    sql: str
    positional: tuple[str, ...] | None  # parameter order for a positional paramstyle
    compiled: SQLCompiler


_compiled: dict[tuple[int, str, str], _Compiled] = {}


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    key = (id(statement), dialect.name, dialect.paramstyle)
    entry = _compiled.get(key)
    if entry is None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        entry = _Compiled(
            statement=statement,
            sql=str(compiled),
            positional=tuple(compiled.positiontup or ()) if compiled.positional else None,
            compiled=compiled,
        )
        _compiled[key] = entry
    return entry


def _bound(entry: _Compiled, params: Mapping[str, Any]) -> Any:
    # The bound values, with those the statement carries itself (its LIMIT).
    values = entry.compiled.construct_params(dict(params))
    if entry.positional is not None:
        return tuple(values[name] for name in entry.positional)
    return values


def read_scalar(
    statement: ClauseElement, params: Mapping[str, Any], engine: Engine | None = None
) -> Any:
    """The first column of the first row a prebuilt single-statement read returns, or None.

    For a read on every request (which fit answers `/predict`). It runs on a pooled DBAPI
    connection directly, its SQL compiled once per dialect, outside any transaction:
    SQLAlchemy's execution layer costs ten times the query itself here (0.2 ms against 0.02 ms
    on SQLite), and on SQLite a lone SELECT in autocommit reads a WAL snapshot without the write
    lock that every session transaction takes (``BEGIN IMMEDIATE``), so it neither waits for a
    writer nor holds one up. The connection goes back to the pool, which rolls back the implicit
    transaction other drivers open. `params` must be values the driver takes as they are
    (strings, numbers): no SQLAlchemy type processing is applied.
    """
    engine = engine if engine is not None else get_engine()
    entry = _compile(statement, engine.dialect)
    bound = _bound(entry, params)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(entry.sql, bound)
            row = cursor.fetchone()
        finally:
            cursor.close()
    finally:
        connection.close()
    return None if row is None else row[0]


# Connections of `read_scalar_nowait`: one per thread and SQLite file, outside the pools, that
# never wait for a lock. Kept here so that reset_engines can close them and a fork drop them.
_nowait: dict[tuple[int, str], sqlite3.Connection] = {}
_nowait_lock = threading.Lock()


def _nowait_connection(database: str) -> sqlite3.Connection | None:
    key = (threading.get_ident(), database)
    with _nowait_lock:
        connection = _nowait.get(key)
    if connection is not None:
        return connection
    try:
        # mode=rw: never create a missing file; timeout 0: a lock is an answer, not a wait.
        connection = sqlite3.connect(
            f"{Path(database).expanduser().resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=0,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error:
        return None
    with _nowait_lock:
        _nowait[key] = connection
    return connection


def read_scalar_nowait(
    statement: ClauseElement, params: Mapping[str, Any], engine: Engine | None = None
) -> tuple[bool, Any]:
    """`read_scalar` for a caller on an event loop: ``(True, value)`` when the database answers
    without waiting, ``(False, None)`` when it might have to wait (the caller then reads in a
    worker thread).

    Only a SQLite file answers here, on a connection of the calling thread that waits for no
    lock (busy timeout 0). In WAL mode a lone read waits for no writer; SQLite may still say
    busy in rare moments (a connection opening or closing the file, recovery after a crash),
    and any error at all is left to the waiting path to report. Other backends are a network
    round trip away, so they always answer ``(False, None)``.
    """
    engine = engine if engine is not None else get_engine()
    database = engine.url.database
    if (
        engine.dialect.name != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
    ):
        return False, None
    connection = _nowait_connection(database)
    if connection is None:
        return False, None
    entry = _compile(statement, engine.dialect)
    try:
        row = connection.execute(entry.sql, _bound(entry, params)).fetchone()
    except sqlite3.Error:
        return False, None
    return True, None if row is None else row[0]


def _close_nowait_connections() -> None:
    with _nowait_lock:
        connections = list(_nowait.values())
        _nowait.clear()
    for connection in connections:
        connection.close()
