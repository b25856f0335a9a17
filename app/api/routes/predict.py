"""`POST /predict`.

The hot path of the service (issue 2: 100 points per request at ≥ 0.5× the request rate of
/health on one worker). Two costs dominate at that size and are avoided here: the thread-pool
hop of a sync handler (the law's arithmetic on 100 points takes microseconds), and re-validating
the response dict against its model before encoding it. Requests that may block (a database
lookup, or many points) still run in the thread pool so the event loop stays responsive.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.schemas.common import ERRORS, NOT_FOUND
from app.schemas.predict import EXAMPLE_PREDICT, PredictRequest, PredictResponse
from app.services import predict as service
from app.services.lawref import fit_cache

router = APIRouter(tags=["predictions"], responses={**ERRORS, **NOT_FOUND})

#: Above this many points the work moves to the thread pool (~1 ms of numpy at 2,000 points).
INLINE_POINTS = 2_000

_EXAMPLES: dict[str, Any] = {
    "inline law, points": {
        "summary": "An inline P² law and two points",
        "value": EXAMPLE_PREDICT,
    },
    "default fit, columns, interval": {
        "summary": "The default fit of a family and method, columns, 80% interval",
        "value": {
            "family": "llama-3",
            "method": "depth",
            "columns": {
                "n0": [1.0e9, 1.0e9],
                "rho": [0.25, 0.25],
                "l0": [2.5, 2.5],
                "tokens": [1.0e8, 1.0e9],
            },
            "interval": 0.8,
        },
    },
}


def _may_block(body: PredictRequest) -> bool:
    if body.n_points > INLINE_POINTS:
        return True
    if body.law is not None:
        return False
    return body.fit_id is None or fit_cache.get(body.fit_id) is None


@router.post("/predict", response_model=PredictResponse)
async def predict(
    body: PredictRequest = Body(..., openapi_examples=_EXAMPLES),
) -> Response:
    """Predict the loss after pruning and post-training at each point."""
    if _may_block(body):
        result = await run_in_threadpool(service.predict, body)
    else:
        result = service.predict(body)
    # The service guarantees finite floats (a non-finite result is a 422), so strict JSON holds.
    return Response(json.dumps(result, allow_nan=False), media_type="application/json")
