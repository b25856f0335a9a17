"""`POST /predict`.

The hot path of the service (issue 8: 100 points per request at ≥ 0.8× the request rate of an
endpoint that only parses the same body for an inline law, ≥ 0.5× for a stored fit with an
interval, on one worker). Four costs dominate at that size and are avoided here: the
thread-pool hop of a sync handler (the law's arithmetic on 100 points takes microseconds),
FastAPI's body handling (the standard library's JSON parser, then validation of the objects;
pydantic-core parses and validates the bytes in one pass, 0.11 ms sooner, with the same 422s),
re-validating the response dict against its model, and the standard library's JSON encoder
(0.19 ms for three lists of 100 floats, against 0.015 ms for pydantic-core's). A stored fit
costs one database read per request (which fit answers); on SQLite it is made on the event loop
without waiting for any lock, and the prediction follows there when the fit is cached. Requests
that may block (another backend, a lock, a fit not yet loaded, many points) run in the thread
pool so the event loop stays responsive: under load the hop to a worker thread cost 0.2 ms of
CPU per request.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from app.api.errors import bad_json_body
from app.schemas.common import ERRORS, NOT_FOUND, unprocessable
from app.schemas.predict import (
    EXAMPLE_PREDICT,
    EXAMPLE_PREDICT_DEFAULT,
    PredictRequest,
    PredictResponse,
)
from app.services import predict as service
from app.services.lawref import resolve_cached

router = APIRouter(tags=["predictions"], responses={**ERRORS, **NOT_FOUND})

#: Above this many points the work moves to the thread pool (~1 ms of numpy at 2,000 points).
INLINE_POINTS = 2_000
#: Bodies above this size (about 2,000 points) are parsed in the thread pool too.
INLINE_BODY_BYTES = 256 * 1024

_EXAMPLES: dict[str, Any] = {
    "inline law, points": {
        "summary": "An inline P² law and two points",
        "value": EXAMPLE_PREDICT,
    },
    "default fit, columns, interval": {
        "summary": "The default fit of a shipped family and method, columns, 80% interval",
        "value": EXAMPLE_PREDICT_DEFAULT,
    },
}


_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/PredictRequest"},
                "examples": _EXAMPLES,
            }
        },
    }
}


def _is_json(content_type: str) -> bool:
    # As FastAPI decides (strict content type): application/json or application/*+json.
    media = content_type.split(";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


def _as_fastapi(raw: bytes, content_type: str) -> PredictRequest:
    """The body parsed and validated the way FastAPI does for a `PredictRequest` parameter,
    raising the RequestValidationError it would raise."""
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    value: Any = raw  # a body that is not JSON goes to validation as bytes, which fails
    if _is_json(content_type):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # Not JSON, bytes that are not text in any JSON encoding, or nesting past the
            # parser's recursion limit: a bad body like any other, 422.
            raise bad_json_body(exc) from None
    try:
        return PredictRequest.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def _parse(raw: bytes, content_type: str) -> PredictRequest:
    """The request body: pydantic-core parses and validates the JSON bytes in one pass. A body
    it refuses, or does not read (JSON that is not UTF-8), takes FastAPI's own way, so that
    what is accepted and every 422 are FastAPI's."""
    if raw and _is_json(content_type):
        try:
            return PredictRequest.model_validate_json(raw)
        except ValidationError:
            pass
    return _as_fastapi(raw, content_type)


#: What /predict refuses beyond its request schema (docs/api.md, POST /predict).
PREDICT_422 = unprocessable(
    "`columns` of unequal lengths;",
    "a `curve` law whose `params` lack one of the six `key@run` entries of a run;",
    "data: no default fit for `family`, `method` and `recipe`; a `fit_id` fitted on another "
    "recipe than the `recipe` given; a `curve` law with no run at a point's n0, rho and l0; a "
    "law that overflows at these points.",
)


@router.post(
    "/predict", response_model=PredictResponse, openapi_extra=_BODY_DOC, responses=PREDICT_422
)
async def predict(request: Request) -> Response:
    """Predict the loss after pruning and post-training at each point."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if len(raw) > INLINE_BODY_BYTES:
        body = await run_in_threadpool(_parse, raw, content_type)
    else:
        body = _parse(raw, content_type)
    if body.n_points > INLINE_POINTS:
        result = await run_in_threadpool(service.predict, body)
    elif body.law is not None:
        result = service.predict(body)
    elif (ref := resolve_cached(body)) is not None:
        result = service.predict(body, ref=ref)
    else:
        result = await run_in_threadpool(service.predict, body)
    # The service guarantees finite floats (a non-finite result is a 422), so the JSON is strict.
    return Response(to_json(result), media_type="application/json")
