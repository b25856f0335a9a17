"""Fixtures shared by every test folder.

Databases are built the way production builds them: by running the Alembic migrations.

- autouse ``_isolated_environment``: DATABASE_URL, MODEL_ROOT, DATA_ROOT, ARTIFACT_ROOT and
  BROKER_DIR point into the test's tmp folder (API_KEY is unset), the settings cache and the
  engine cache are cleared before and after, so no test touches the developer's ``var/``.
- ``backend``: ``"sqlite"`` or ``"postgresql"`` (marked ``postgres``; skipped with the reason
  when no server answers at ``PG_ADMIN_URL``). Tests using the fixtures below run on both.
- ``db_url``: a fresh, empty database of that backend (a tmp SQLite file, or a PostgreSQL
  database ``p2law_test_<random>`` dropped afterwards). For migration tests.
- ``migrated_engine``: an engine on a database migrated to head, built once per backend per
  test session (migrating per test would cost more than most tests).
- ``session``: a Session on ``migrated_engine`` inside a transaction that is rolled back after
  the test; ``session.commit()`` inside the test only releases a savepoint.
- ``sqlite_url``: SQLite only, a fresh file migrated to head that is also the DATABASE_URL the
  app reads, for tests that need committed data (API through TestClient, worker processes).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.db.migrate import upgrade
from app.db.session import create_engine_for, reset_engines

#: Server used to create and drop the per-run PostgreSQL databases (trust auth on CI).
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@functools.cache
def _pg_unreachable_reason() -> str | None:
    """None when PostgreSQL answers, else why not (the skip reason); asked once per run."""
    try:
        with psycopg.connect(_libpq(PG_ADMIN_URL), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {error}".strip()


def _libpq(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (drops the ``+psycopg`` driver part)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _create_pg_database() -> str:
    name = f"p2law_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as admin:
        # FORCE ends connections a failed test may have left open (PostgreSQL 13+).
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    var = tmp_path / "var"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{var / 'p2law.sqlite3'}")
    monkeypatch.setenv("MODEL_ROOT", str(var / "models"))
    monkeypatch.setenv("DATA_ROOT", str(var / "data"))
    monkeypatch.setenv("ARTIFACT_ROOT", str(var / "artifacts"))
    monkeypatch.setenv("BROKER_DIR", str(var / "broker"))
    monkeypatch.delenv("API_KEY", raising=False)
    get_settings.cache_clear()
    reset_engines()
    yield
    reset_engines()
    get_settings.cache_clear()


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend a test runs on."""
    name = str(request.param)
    if name == "postgresql":
        reason = _pg_unreachable_reason()
        if reason is not None:
            pytest.skip(reason)
    return name


def _new_database(backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'test.sqlite3'}"
    return _create_pg_database()


def _remove_database(url: str) -> None:
    if make_url(url).get_backend_name() == "postgresql":
        _drop_pg_database(url)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (not migrated) database URL for ``backend``."""
    url = _new_database(backend, tmp_path / "db")
    yield url
    reset_engines()
    _remove_database(url)


@pytest.fixture(scope="session")
def migrated_engine(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on a database of ``backend`` migrated to head (one per test session)."""
    url = _new_database(backend, tmp_path_factory.mktemp(f"migrated-{backend}"))
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()
    _remove_database(url)


@pytest.fixture
def session(migrated_engine: Engine) -> Iterator[Session]:
    """A session whose work is rolled back after the test (commits become savepoints)."""
    with migrated_engine.connect() as connection:
        transaction = connection.begin()
        db = Session(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
        )
        try:
            yield db
        finally:
            db.close()
            transaction.rollback()


@pytest.fixture
def sqlite_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A SQLite file migrated to head, also set as the app's DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engines()
    return url
