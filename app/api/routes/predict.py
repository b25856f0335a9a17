"""`POST /predict`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.schemas.common import ERRORS, NOT_FOUND
from app.schemas.predict import EXAMPLE_PREDICT, PredictRequest, PredictResponse
from app.services import predict as service

router = APIRouter(tags=["predictions"], responses={**ERRORS, **NOT_FOUND})

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


@router.post("/predict", response_model=PredictResponse)
def predict(
    body: PredictRequest = Body(..., openapi_examples=_EXAMPLES),
) -> dict[str, Any]:
    """Predict the loss after pruning and post-training at each point."""
    return service.predict(body)
