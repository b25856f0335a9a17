"""`POST /plan`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.api.deps import SessionDep
from app.schemas.common import ERRORS, unprocessable
from app.schemas.plan import EXAMPLE_PLAN, EXAMPLE_PLAN_GRIDS, PlanRequest, PlanResponse
from app.services import plan as service

router = APIRouter(tags=["predictions"], responses=ERRORS)

_EXAMPLES: dict[str, Any] = {
    "all methods": {
        "summary": "Every method with a default fit, default grids, 80% interval",
        "value": EXAMPLE_PLAN,
    },
    "explicit grids": {
        "summary": "Two methods on explicit ρ and token grids, top 10",
        "value": EXAMPLE_PLAN_GRIDS,
    },
}


#: What /plan refuses beyond its request schema (docs/api.md, POST /plan).
PLAN_422 = unprocessable(
    "a `rho_grid` with no value ≥ `rho_min`, a `token_grid` with no value ≤ `token_budget`;",
    "data: no requested method with a default fit for `family` under a requested recipe.",
)


@router.post("/plan", response_model=PlanResponse, responses=PLAN_422)
def plan(
    session: SessionDep,
    body: PlanRequest = Body(..., openapi_examples=_EXAMPLES),
) -> dict[str, Any]:
    """Rank (method, ρ, tokens) options for a dense model by predicted loss."""
    return service.plan(session, body)
