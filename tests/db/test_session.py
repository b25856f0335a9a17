"""Engine settings and transaction helpers, SQLite's multi-writer setup in particular."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Float,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.db.models import Observation
from app.db.session import (
    get_db,
    get_engine,
    make_sessionmaker,
    read_scalar,
    read_scalar_nowait,
    reset_engines,
    session_scope,
)
from app.repositories import observations

WRITERS = 4
POINTS_PER_WRITER = 250


def _row(run_id: str, tokens: float, loss: float = 2.0) -> dict[str, object]:
    return {
        "run_id": run_id,
        "family": "tiny",
        "method": "depth",
        "n0": 1e6,
        "rho": 0.5,
        "l0": 3.0,
        "tokens": tokens,
        "loss": loss,
    }


def _in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``work`` in a daemon thread; the list collects what it raised."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported by the test's assertions
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def test_a_sqlite_reader_mid_transaction_does_not_hold_up_a_writer(sqlite_url: str) -> None:
    database = make_url(sqlite_url).database
    assert database is not None
    engine = get_engine(sqlite_url)
    reader = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM observations").fetchone() == (0,)

        def write() -> None:
            with session_scope(engine) as session:
                observations.insert_ignore(session, [_row("while-reading", 1.0)])

        # Without WAL the commit would wait for the reader's lock (busy timeout, then fail).
        writer, failures = _in_thread(write)
        writer.join(timeout=5)
        assert not writer.is_alive() and failures == []
        # The reader keeps the snapshot it started with until it ends its transaction.
        assert reader.execute("SELECT count(*) FROM observations").fetchone() == (0,)
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM observations").fetchone() == (1,)
    finally:
        reader.close()


def test_a_blocked_sqlite_writer_waits_for_the_lock_instead_of_failing(sqlite_url: str) -> None:
    database = make_url(sqlite_url).database
    assert database is not None
    engine = get_engine(sqlite_url)
    holder = sqlite3.connect(database, timeout=0, isolation_level=None, check_same_thread=False)
    release = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    try:
        holder.execute("BEGIN IMMEDIATE")
        release.start()
        started = time.monotonic()
        with session_scope(engine) as session:
            observations.insert_ignore(session, [_row("waited", 1.0)])
        waited = time.monotonic() - started
        release.join()
    finally:
        release.cancel()
        holder.close()
    assert waited >= 0.4
    with make_sessionmaker(engine)() as session:
        assert observations.count_by_run(session, "waited") == 1


def test_sqlite_connections_enforce_foreign_keys(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as connection:
        connection.exec_driver_sql("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
        connection.exec_driver_sql(
            "CREATE TEMP TABLE child (parent_id INTEGER REFERENCES parent (id))"
        )
        with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"):
            connection.exec_driver_sql("INSERT INTO child (parent_id) VALUES (1)")


def test_sqlite_transaction_holds_the_write_lock_from_its_first_read(sqlite_url: str) -> None:
    database = make_url(sqlite_url).database
    assert database is not None
    with session_scope(get_engine(sqlite_url)) as session:
        session.execute(text("SELECT count(*) FROM observations")).scalar_one()
        # A read-only statement already took the write lock (BEGIN IMMEDIATE): another
        # connection that will not wait cannot start a write transaction now.
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_get_engine_is_cached_per_url_and_creates_the_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'deeper' / 'x.sqlite3'}"
    engine = get_engine(url)
    assert get_engine(url) is engine
    assert (tmp_path / "nested" / "deeper").is_dir()
    reset_engines()
    assert get_engine(url) is not engine


def test_get_engine_defaults_to_database_url(sqlite_url: str) -> None:
    assert get_engine().url.database == make_url(sqlite_url).database


def test_session_scope_commits_on_success_and_rolls_back_on_error(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    with session_scope(engine) as session:
        observations.insert_ignore(session, [_row("kept", 1.0)])
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        observations.insert_ignore(session, [_row("dropped", 1.0)])
        raise RuntimeError("boom")
    with make_sessionmaker(engine)() as session:
        assert observations.count_by_run(session, "kept") == 1
        assert observations.count_by_run(session, "dropped") == 0


def test_get_db_yields_a_session_that_does_not_commit(sqlite_url: str) -> None:
    requests = get_db()
    session = next(requests)
    observations.insert_ignore(session, [_row("uncommitted", 1.0)])
    requests.close()  # what FastAPI does after the response
    with make_sessionmaker(get_engine())() as fresh:
        assert observations.count_by_run(fresh, "uncommitted") == 0


def test_created_at_reads_back_timezone_aware_utc(session: Session) -> None:
    before = datetime.now(UTC)
    observations.insert_ignore(session, [_row("clock", 1.0)])
    stored = session.query(Observation).filter_by(run_id="clock").one()
    session.refresh(stored)
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() is not None
    assert abs((stored.created_at - before).total_seconds()) < 60


def _writer(url: str, worker: int, results: multiprocessing.Queue[tuple[int, int, str]]) -> None:
    """Read-then-write transactions: the pattern that fails under a deferred BEGIN."""
    errors = 0
    first_error = ""
    engine = get_engine(url)
    run_id = f"writer-{worker}"
    for _ in range(POINTS_PER_WRITER):
        try:
            with session_scope(engine) as session:
                seen = observations.count_by_run(session, run_id)
                observations.insert_ignore(session, [_row(run_id, float(seen + 1))])
        except OperationalError as error:
            errors += 1
            first_error = first_error or str(error)
    results.put((worker, errors, first_error))


def test_four_processes_write_one_sqlite_file_without_lock_errors(sqlite_url: str) -> None:
    # fork, as Celery's prefork pool does; the engine cache is dropped in the child.
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[tuple[int, int, str]] = context.Queue()
    get_engine(sqlite_url).dispose()
    processes = [
        context.Process(target=_writer, args=(sqlite_url, worker, results))
        for worker in range(WRITERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    assert [(worker, errors) for worker, errors, _ in sorted(outcomes)] == [
        (worker, 0) for worker in range(WRITERS)
    ], outcomes
    with make_sessionmaker(get_engine(sqlite_url))() as session:
        assert session.query(Observation).count() == WRITERS * POINTS_PER_WRITER
        for worker in range(WRITERS):
            assert observations.count_by_run(session, f"writer-{worker}") == POINTS_PER_WRITER


def test_read_scalar_reads_beside_a_held_write_lock_and_takes_none(sqlite_url: str) -> None:
    database = make_url(sqlite_url).database
    assert database is not None
    with session_scope() as session:
        observations.insert_ignore(session, [_row("seen", 1.0, loss=2.5)])
    statement = select(Observation.loss).where(Observation.run_id == bindparam("run"))
    holder = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        start = time.perf_counter()
        # A session would wait here for the holder's lock (busy timeout 30 s).
        assert read_scalar(statement, {"run": "seen"}) == 2.5
        assert read_scalar(statement, {"run": "unseen"}) is None
        assert time.perf_counter() - start < 5
        # No read transaction stays open on the pooled connection: the next read sees the
        # holder's commit instead of its old snapshot.
        holder.execute("UPDATE observations SET loss = 2.25 WHERE run_id = 'seen'")
        holder.execute("COMMIT")
        assert read_scalar(statement, {"run": "seen"}) == 2.25
    finally:
        holder.close()


def test_read_scalar_nowait_answers_from_sqlite_or_says_it_would_wait(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite3"
    setup = sqlite3.connect(path, isolation_level=None)  # a rollback journal, unlike the app's
    setup.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v REAL)")
    setup.execute("INSERT INTO t VALUES ('a', 1.5)")
    setup.close()
    table = Table("t", MetaData(), Column("k", String, primary_key=True), Column("v", Float))
    statement = select(table.c.v).where(table.c.k == bindparam("k"))
    engine = create_engine(f"sqlite:///{path}")
    try:
        assert read_scalar_nowait(statement, {"k": "a"}, engine) == (True, 1.5)
        assert read_scalar_nowait(statement, {"k": "b"}, engine) == (True, None)
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")  # in this journal mode, readers must wait
            start = time.perf_counter()
            assert read_scalar_nowait(statement, {"k": "a"}, engine) == (False, None)
            assert time.perf_counter() - start < 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert read_scalar_nowait(statement, {"k": "a"}, engine) == (True, 1.5)
    finally:
        engine.dispose()
        reset_engines()  # closes the no-wait connections too
    missing = tmp_path / "missing.sqlite3"
    assert read_scalar_nowait(statement, {"k": "a"}, create_engine(f"sqlite:///{missing}")) == (
        False,
        None,
    )
    assert not missing.exists()  # never created by the attempt
    postgres = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert read_scalar_nowait(statement, {"k": "a"}, postgres) == (False, None)
