"""`/docs` and `/redoc` render from the assets installed with the app, with no other host."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.web.docs import ASSET_FILES, ASSETS_URL
from tests.web.conftest import LiveServer, WebPage

pytestmark = pytest.mark.xdist_group("web")


def test_docs_pages_point_only_at_local_assets_with_cache_headers(sqlite_url: str) -> None:
    with TestClient(create_app()) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assert "http://" not in html and "https://" not in html, html
            assert ASSETS_URL in html
        for name in ASSET_FILES:
            response = client.get(f"{ASSETS_URL}/{name}?v=1")
            assert response.status_code == 200, name
            assert "max-age=31536000" in response.headers["cache-control"]
        assert client.get("/docs/oauth2-redirect").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert not {"/", "/docs", "/redoc"} & set(paths)


def test_swagger_ui_renders_the_operations_and_their_examples(
    live_server: LiveServer, web: WebPage
) -> None:
    page = web.page
    page.goto(f"{live_server.url}/docs")
    operation = page.locator(".opblock-post", has_text="/jobs/prune-finetune").first
    operation.wait_for()
    assert "POST" in operation.inner_text()
    recommend = page.locator(".opblock-post", has_text="/recommend").first
    recommend.locator(".opblock-summary").first.click()
    # The worked examples of the schema are offered by name, the first one shown as the body.
    recommend.get_by_text("Within 0.01 nats of the floor, inline law").first.wait_for(
        state="attached"
    )
    assert '"rule": "gap"' in recommend.locator(".body-param__example").first.inner_text()
    web.screenshot("docs")
    web.assert_offline()


def test_redoc_renders_the_operations(live_server: LiveServer, web: WebPage) -> None:
    page = web.page
    page.goto(f"{live_server.url}/redoc")
    page.get_by_text("/jobs/prune-finetune").first.wait_for(state="attached")
    assert page.get_by_text("Queue a prune").count() >= 1
    web.screenshot("redoc")
    # ReDoc always asks a CDN for its "powered by" logo: the content policy refuses it.
    web.assert_offline(refused=1)
    assert "cdn.redoc.ly" in web.refused[0]
