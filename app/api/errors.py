"""Exception handlers: every error is `{"detail": ...}` JSON with the status it means.

The default 422 handler echoes the offending input, and a non-finite float (from `NaN`,
`Infinity` or `1e400` in the body) makes Starlette's strict JSON encoder fail with a 500
(docs/reliability.md). The handler here replaces non-finite numbers with their repr and anything
not JSON-native (exception objects in `ctx`, bytes) with a string.

Two answers of the framework are corrected so that they match the OpenAPI document:

- a JSON body that is not text in a JSON encoding, or is nested past the parser's recursion
  limit, is a 422 `json_invalid` like any other body that is not JSON (FastAPI answers these
  with an undocumented 400, since only `json.JSONDecodeError` is its "bad JSON");
- a 405 lists in `Allow` every method the document gives the path (Starlette lists only the
  methods of the first route that matched the path, so `GET /fits` and `POST /fits` each hid
  the other). A path the document does not hold (the docs pages) keeps Starlette's `Allow`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

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


def bad_json_body(cause: Exception) -> RequestValidationError:
    """The 422 for a JSON body the parser refused, as FastAPI words its own `json_invalid`
    (location `body` and, where known, the offset of the first bad byte or character)."""
    loc: tuple[str | int, ...] = ("body",)
    if isinstance(cause, json.JSONDecodeError):
        loc, why = ("body", cause.pos), cause.msg
    elif isinstance(cause, UnicodeDecodeError):
        loc, why = ("body", cause.start), f"not valid {cause.encoding}: {cause.reason}"
    elif isinstance(cause, RecursionError):
        why = "nested too deeply"
    else:
        why = str(cause) or type(cause).__name__
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": loc,
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": why},
            }
        ]
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [json_safe(dict(e)) for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


#: The methods an operation of an OpenAPI document can have.
_METHODS = ("GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE")


def documented_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path: those of its own entry, or
    else of every templated path it matches (`/jobs/prune-finetune` is its own resource, not
    a job id)."""
    root = request.scope.get("root_path", "")
    path = request.scope["path"]
    path = path[len(root) :] if root and path.startswith(root) else path
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    items = [paths[path]] if path in paths else []
    if not items:
        items = [item for template, item in paths.items() if compile_path(template)[0].match(path)]
    return [method for method in _METHODS if any(method.lower() in item for item in items)]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's "There was an error parsing the body": the JSON parser failed on bytes
        # that are not text (UnicodeDecodeError) or on nesting (RecursionError).
        return await _validation_error(request, bad_json_body(exc.__cause__))
    if exc.status_code == 405 and (methods := documented_methods(request)):
        headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        exc = HTTPException(405, detail=exc.detail, headers=headers)
    return await http_exception_handler(request, exc)


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
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(LawError, _law_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
