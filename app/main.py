"""The FastAPI application: routers, error handlers, body-size limit, OpenAPI docs.

`uvicorn app.main:app` serves the module-level `app`; tests build their own with `create_app()`
after pointing the settings at a migrated database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from app.api.body_limit import BodySizeLimit
from app.api.errors import install_error_handlers
from app.api.routes import (
    families,
    fits,
    health,
    jobs,
    observations,
    plan,
    predict,
    recommend,
)
from app.core.config import get_settings
from app.schemas.observations import ObservationsIn
from app.schemas.predict import PredictRequest
from app.services.health import VERSION
from app.web import install_web

DESCRIPTION = """
Predict, plan and run post-training of pruned LLMs with the **P² law**
(Chen, Hu et al., ACL 2025):

    L = L0 + (1/ρ)^γ · (1/N0)^δ · (N_C / N0^α + D_C / D^β + E)

Requests and responses use raw counts: `n0` in parameters, `tokens` in tokens; inline law
constants use billions (docs/law.md §1). Upload observed losses, fit a law, then predict,
recommend a token budget, or plan the joint choice of pruning method, ρ and tokens.
Errors are `{"detail": ...}`; write routes need `X-API-Key` when `API_KEY` is set.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Nothing to start: engines are created on first use and disposed with the process."""
    yield


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema, plus the models of bodies the routes parse themselves (the
    observation upload accepts JSON or CSV, and /predict parses its JSON in one pass, so
    FastAPI does not see their models)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _, extra = models_json_schema(
        [(ObservationsIn, "validation"), (PredictRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in extra.get("$defs", {}).items():
        components.setdefault(name, definition)
    app.openapi_schema = schema
    return schema


def create_app() -> FastAPI:
    """A new application reading the current settings."""
    settings = get_settings()
    app = FastAPI(
        title="p2law",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from installed assets by install_web (app/web/docs.py)
        redoc_url=None,
    )
    for module in (health, predict, recommend, plan, families, observations, fits, jobs):
        app.include_router(module.router)
    install_web(app)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
