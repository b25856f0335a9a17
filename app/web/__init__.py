"""The browser side of the service, served by the API itself with nothing from a CDN: the
OpenAPI docs (`/docs`, `/redoc`) from assets installed with the app, and the planner page (`/`)
from `app/web/static/` (docs/api.md "Web pages")."""

from __future__ import annotations

from fastapi import FastAPI

from app.web import docs, routes


def install_web(app: FastAPI) -> None:
    """Serve the docs and the planner page on `app` (create it with docs_url=redoc_url=None)."""
    docs.install_docs(app)
    routes.install_page(app)
