"""`POST /recommend`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.api.deps import SessionDep
from app.schemas.common import ERRORS, EXAMPLE_LAW, NOT_FOUND
from app.schemas.recommend import RecommendRequest, RecommendResponse
from app.services import recommend as service

router = APIRouter(tags=["predictions"], responses={**ERRORS, **NOT_FOUND})

_EXAMPLES: dict[str, Any] = {
    "gap": {
        "summary": "Within 0.01 nats of the floor, inline law",
        "value": {
            "law": EXAMPLE_LAW,
            "n0": 1.0e9,
            "rho": 0.25,
            "l0": 2.5,
            "rule": "gap",
            "threshold": 0.01,
        },
    },
    "target": {
        "summary": "Reach a target loss with the default fit, capped, with an interval",
        "value": {
            "family": "llama-3",
            "method": "depth",
            "n0": 1.0e9,
            "rho": 0.25,
            "l0": 2.5,
            "rule": "target",
            "target_loss": 2.7,
            "max_tokens": 5.0e10,
            "interval": 0.8,
        },
    },
    "marginal": {
        "summary": "Stop when a billion more tokens buys less than 0.001 nats",
        "value": {
            "law": EXAMPLE_LAW,
            "n0": 1.0e9,
            "rho": 0.25,
            "l0": 2.5,
            "rule": "marginal",
            "threshold": 0.001,
        },
    },
}


@router.post("/recommend", response_model=RecommendResponse)
def recommend(
    session: SessionDep,
    body: RecommendRequest = Body(..., openapi_examples=_EXAMPLES),
) -> dict[str, Any]:
    """Recommend how many post-training tokens a pruned model needs, by a rule."""
    return service.recommend(body, session)
