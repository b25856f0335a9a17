"""The planner page: `/` and the files under `app/web/static/`.

Hand-written HTML, JavaScript and CSS with no build step and nothing from a CDN; the page
calls the same HTTP API as any client (docs/api.md "Web pages").
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse

from app.web.assets import REVALIDATE, SAME_ORIGIN_ONLY, CachedStaticFiles

#: The page's files, shipped as package data (pyproject.toml).
STATIC_DIR = Path(__file__).parent / "static"
#: Where they are served.
STATIC_URL = "/static/app"

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    """The planner page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers={"Cache-Control": REVALIDATE, "Content-Security-Policy": SAME_ORIGIN_ONLY},
    )


def install_page(app: FastAPI) -> None:
    """Add `/` and mount the page's files on `app`."""
    app.include_router(router)
    app.mount(
        STATIC_URL,
        CachedStaticFiles(directory=STATIC_DIR, cache_control=REVALIDATE),
        name="app-assets",
    )
