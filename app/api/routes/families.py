"""`GET /families`, `GET /families/{family}`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.api.deps import SessionDep
from app.schemas.common import ERRORS, NO_NUL, ErrorResponse
from app.schemas.families import FamiliesOut, FamilySummary
from app.services import families as service

router = APIRouter(tags=["families"], responses=ERRORS)


@router.get("/families", response_model=FamiliesOut)
def list_families(session: SessionDep) -> dict[str, Any]:
    """The families and methods the stored observations cover, with the span of n0, ρ, L0 and
    tokens of each (inside them a law interpolates; outside, answers carry warnings) and the
    default fit that answers `/predict`, `/recommend` and `/plan` for each method."""
    return {"families": service.list_families(session)}


@router.get(
    "/families/{family}",
    response_model=FamilySummary,
    responses={404: {"model": ErrorResponse, "description": "No observations of this family."}},
)
def get_family(
    session: SessionDep,
    family: Annotated[str, Path(max_length=64, pattern=NO_NUL, description="A family name.")],
) -> dict[str, Any]:
    """One family of `GET /families`."""
    return service.get_family(session, family)
