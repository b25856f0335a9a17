"""schemathesis over the whole OpenAPI schema, in-process (docs/reliability.md): no 5xx and every
documented response matches its schema. Fixed seed, few examples per operation: a smoke net
for inputs nobody thought of, not a load test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.core.config import get_settings
from app.db.migrate import upgrade
from app.db.session import reset_engines
from app.main import create_app
from app.services.lawref import fit_cache


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """One app on one migrated SQLite file for the whole module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'api.sqlite3'}"
    upgrade(url)
    patch = pytest.MonkeyPatch()
    patch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engines()
    fit_cache.clear()
    app = create_app()
    app.state.database_url = url
    yield app
    patch.undo()
    reset_engines()
    get_settings.cache_clear()


@pytest.fixture
def _keep_database(api_app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    # The autouse fixture points DATABASE_URL at a per-test file; this module's app keeps its own.
    monkeypatch.setenv("DATABASE_URL", str(api_app.state.database_url))
    get_settings.cache_clear()
    reset_engines()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(api_app: FastAPI) -> schemathesis.BaseSchema:
    """The app's schema loaded in-process (ASGI transport, no server)."""
    return schemathesis.openapi.from_asgi("/openapi.json", api_app)


@schema.parametrize()
@settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors_and_responses_match_the_schema(
    case: schemathesis.Case, _keep_database: None
) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
