"""GET /health and the OpenAPI document."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.db.session import reset_engines


def test_health_reports_database_broker_and_version(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("ok", "degraded")
    assert body["database"]["ok"] is True and body["database"]["detail"] == "sqlite"
    assert isinstance(body["broker"]["ok"], bool)
    assert body["version"]


def test_health_degrades_instead_of_failing_when_the_database_is_gone(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    reset_engines()
    body = client.get("/health").json()
    assert body["status"] == "degraded" and body["database"]["ok"] is False


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
