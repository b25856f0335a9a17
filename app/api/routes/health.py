"""`GET /health`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.schemas.health import HealthResponse
from app.services import health as service

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
def health() -> dict[str, Any]:
    """Report liveness and the state of the database and the broker."""
    return service.health()
