"""Response of `GET /health`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ComponentStatus(BaseModel):
    """The state of one dependency."""

    model_config = ConfigDict(extra="allow")

    ok: bool
    detail: str | None = Field(None, description="Why it is not ok, or what it is.")


class HealthResponse(BaseModel):
    """Liveness and the state of the database and the broker."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "database": {"ok": True, "detail": "sqlite"},
                    "broker": {"ok": True, "detail": "embedded"},
                    "version": "0.1.0",
                }
            ]
        }
    )

    status: Literal["ok", "degraded"]
    database: ComponentStatus
    broker: ComponentStatus
    version: str
