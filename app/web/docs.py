"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from assets installed with the app.

FastAPI's own pages load their JavaScript, CSS, favicon (and ReDoc its fonts) from CDNs, so on a
machine without internet they stay blank. The package `fastapi-offline` ships those files; only
its `static/` folder is used here, with FastAPI's page builders, so the pages are FastAPI's own
(worked examples included) with local URLs, and a content policy that keeps the browser from
fetching anything from another host (ReDoc's "powered by" logo would come from a CDN). The
asset URLs carry the package's version, so a browser may keep them for a year and still gets
new files after an upgrade.
"""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

from app.web.assets import IMMUTABLE, SAME_ORIGIN_ONLY, CachedStaticFiles

#: Where the vendored Swagger UI and ReDoc files are served.
ASSETS_URL = "/static/docs"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder of the vendored files inside the installed `fastapi_offline` package."""
    folder = Path(str(resources.files("fastapi_offline").joinpath("static")))
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is installed without {missing} in {folder}")
    return folder


def _asset(request: Request, name: str, version: str) -> str:
    """The URL of one vendored file, versioned so that it can be cached for good."""
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}?v={version}"


def install_docs(app: FastAPI) -> None:
    """Mount the vendored assets and add `/docs`, its OAuth2 redirect and `/redoc` to `app`."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None and redoc_url=None")
    app.mount(
        ASSETS_URL,
        CachedStaticFiles(directory=assets_dir(), cache_control=IMMUTABLE),
        name="docs-assets",
    )
    version = metadata.version("fastapi-offline")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI on the service's OpenAPI schema."""
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=_asset(request, "swagger-ui-bundle.js", version),
            swagger_css_url=_asset(request, "swagger-ui.css", version),
            swagger_favicon_url=_asset(request, "favicon.png", version),
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        """The page Swagger UI's OAuth2 flow returns to."""
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc on the service's OpenAPI schema, without Google Fonts."""
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=_asset(request, "redoc.standalone.js", version),
            redoc_favicon_url=_asset(request, "favicon.png", version),
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page
