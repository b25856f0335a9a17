"""`POST /plan`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.api.deps import SessionDep
from app.schemas.common import ERRORS, unprocessable
from app.schemas.plan import PlanRequest, PlanResponse
from app.services import plan as service

router = APIRouter(tags=["predictions"], responses=ERRORS)

_EXAMPLES: dict[str, Any] = {
    "all methods": {
        "summary": "Every method with a default fit, default grids, 80% interval",
        "value": {
            "family": "llama-3",
            "n0": 8.03e9,
            "l0": 2.1,
            "rho_min": 0.2,
            "token_budget": 5.0e9,
            "interval": 0.8,
        },
    },
    "explicit grids": {
        "summary": "Two methods on explicit ρ and token grids, top 10",
        "value": {
            "family": "llama-3",
            "methods": ["depth", "width"],
            "n0": 8.03e9,
            "l0": 2.1,
            "rho_min": 0.25,
            "token_budget": 2.0e9,
            "rho_grid": [0.25, 0.3, 0.35],
            "token_grid": [5.0e8, 1.0e9, 2.0e9],
            "max_options": 10,
        },
    },
}


#: What /plan refuses beyond its request schema (docs/api.md, POST /plan).
PLAN_422 = unprocessable(
    "a `rho_grid` with no value ≥ `rho_min`, a `token_grid` with no value ≤ `token_budget`;",
    "data: no requested method with a default fit for `family`.",
)


@router.post("/plan", response_model=PlanResponse, responses=PLAN_422)
def plan(
    session: SessionDep,
    body: PlanRequest = Body(..., openapi_examples=_EXAMPLES),
) -> dict[str, Any]:
    """Rank (method, ρ, tokens) options for a dense model by predicted loss."""
    return service.plan(session, body)
