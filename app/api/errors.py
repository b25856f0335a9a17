"""Exception handlers: every error is `{"detail": ...}` JSON with the status it means.

The default 422 handler echoes the offending input, and a non-finite float (from `NaN`,
`Infinity` or `1e400` in the body) makes Starlette's strict JSON encoder fail with a 500
(docs/reliability.md). The handler here replaces non-finite numbers with their repr and anything
not JSON-native (exception objects in `ctx`, bytes) with a string.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from app.core.errors import AppError
from app.law.errors import LawError, UnreachableTarget

log = logging.getLogger(__name__)

#: Inputs echoed back in a 422 are cut to this many characters (a 30 MB body is not repeated).
_MAX_ECHO = 200


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of `value` that strict JSON can encode: non-finite floats become their repr."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > _MAX_ECHO:
            return value[:_MAX_ECHO] + "…"
        return value
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        items = [json_safe(v, depth + 1) for v in value[:50]]
        if len(value) > 50:
            items.append(f"… {len(value) - 50} more")
        return items
    if isinstance(value, bytes):
        return json_safe(value[:_MAX_ECHO].decode("utf-8", "replace"), depth + 1)
    return json_safe(str(value), depth + 1)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [json_safe(dict(e)) for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})


async def _law_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LawError)
    content: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, UnreachableTarget):
        content["floor_loss"] = json_safe(exc.floor_loss)
        content["target_loss"] = json_safe(exc.target_loss)
    return JSONResponse(status_code=422, content=content)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A database that is down, locked past its timeout or not migrated is the service's
    # state, not the client's fault: 503 (retry later), with nothing half-written (the
    # transaction is rolled back with the session).
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    detail = (
        "the database is unavailable or not migrated (run `make migrate`); retry later: "
        f"{type(exc.__cause__ or exc).__name__}"
    )
    return JSONResponse(status_code=503, content={"detail": detail})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(LawError, _law_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
