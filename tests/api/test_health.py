"""GET /health and the OpenAPI document."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.db.session import reset_engines


def test_health_with_the_database_and_the_broker_up_is_ok_on_both(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "detail": "sqlite"}
    broker = body["broker"]
    assert broker["ok"] is True and broker["kind"] == "embedded"
    messages = Path(get_settings().broker_dir) / "messages"
    assert broker["detail"] == f"embedded (files in {messages})"
    assert body["version"] == importlib.metadata.version("p2law")


def test_health_with_the_database_down_says_so_with_the_reason(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    reset_engines()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is False
    assert body["database"]["detail"].startswith("OperationalError: ")
    assert "Connection refused" in body["database"]["detail"]
    assert body["broker"]["ok"] is True


def test_health_with_the_broker_down_says_so_with_the_reason(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The embedded broker's folder cannot be created below a regular file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BROKER_DIR", str(blocker / "broker"))
    get_settings.cache_clear()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["broker"]["ok"] is False and body["broker"]["kind"] == "embedded"
    assert body["broker"]["detail"].startswith("embedded broker folder: ")
    assert "Not a directory" in body["broker"]["detail"]
    assert body["database"] == {"ok": True, "detail": "sqlite"}


def test_every_route_documents_examples_for_its_body_and_response(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def has_example(media: dict[str, object]) -> bool:
        if "example" in media or "examples" in media:
            return True
        ref = media.get("schema", {})
        assert isinstance(ref, dict)
        name = str(ref.get("$ref", "")).rsplit("/", 1)[-1]
        return bool(components.get(name, {}).get("examples"))

    ours = [p for p in schema["paths"] if not p.startswith("/jobs")]
    assert {"/predict", "/recommend", "/plan", "/observations", "/fits", "/health"} <= set(ours)
    for path in ours:
        for method, operation in schema["paths"][path].items():
            if "requestBody" in operation:
                for media_type, media in operation["requestBody"]["content"].items():
                    assert has_example(media), (path, method, media_type)
            ok = operation["responses"].get("200") or operation["responses"].get("201")
            assert ok is not None, (path, method)
            for media_type, media in ok.get("content", {}).items():
                if media_type == "application/json":
                    assert has_example(media), (path, method, "response")
    assert client.get("/docs").status_code == 200
