"""A database that is down or not migrated is a 503 with a JSON body, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.db.migrate import upgrade
from app.db.session import reset_engines
from app.main import create_app
from tests.api.conftest import error_message

ROW = {
    "run_id": "r1",
    "family": "f",
    "method": "depth",
    "n0": 1e9,
    "rho": 0.25,
    "l0": 2.5,
    "tokens": 1e8,
    "loss": 2.7,
}


def test_unmigrated_database_is_a_503_and_the_retry_after_migrating_stores_the_rows() -> None:
    with TestClient(create_app()) as client:
        answer = client.post("/observations", json={"observations": [ROW]})
        assert "run `make migrate`" in error_message(answer, 503)
        upgrade()
        answer = client.post("/observations", json={"observations": [ROW]})
        assert answer.status_code == 201 and answer.json() == {"inserted": 1, "duplicates": 0}


def test_unreachable_database_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    reset_engines()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        answer = client.get("/fits")
        message = error_message(answer, 503)
        assert message.startswith("the database is unavailable")
        assert message.endswith("retry later: OperationalError")
        # The service keeps answering, and /health names the database as the problem.
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["database"]["ok"] is False
