"""`POST /recommend`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.api.deps import SessionDep
from app.schemas.common import ERRORS, EXAMPLE_LAW, NOT_FOUND, unprocessable
from app.schemas.recommend import EXAMPLE_RECOMMEND_TARGET, RecommendRequest, RecommendResponse
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
        "summary": "Reach a target loss with a shipped family's default fit, capped, interval",
        "value": EXAMPLE_RECOMMEND_TARGET,
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


#: What /recommend refuses beyond its request schema (docs/api.md, POST /recommend).
RECOMMEND_422 = unprocessable(
    "a `curve` law whose `params` lack one of the six `key@run` entries of a run;",
    "data: no default fit for `family`, `method` and `recipe`; a `fit_id` fitted on another "
    "recipe than the `recipe` given; a target at or below the law's floor "
    "(the body also carries `floor_loss` and `target_loss`); a rule not met below 1e15 tokens "
    "without `max_tokens`; a `curve` law with no run at this n0, rho and l0; a law that "
    "overflows here.",
)


@router.post("/recommend", response_model=RecommendResponse, responses=RECOMMEND_422)
def recommend(
    session: SessionDep,
    body: RecommendRequest = Body(..., openapi_examples=_EXAMPLES),
) -> dict[str, Any]:
    """Recommend how many post-training tokens a pruned model needs, by a rule."""
    return service.recommend(body, session)
