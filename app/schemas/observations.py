"""Observed losses: upload (JSON or CSV) and paged listing (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import L0, N0, NO_NUL, Loss, Page, Recipe, Rho, Tokens

EXAMPLE_OBSERVATION: dict[str, Any] = {
    "run_id": "llama-1b-depth-0.25",
    "family": "llama-3",
    "method": "depth",
    "n0": 1.0e9,
    "rho": 0.25,
    "l0": 2.5,
    "tokens": 1.0e8,
    "loss": 2.70,
    "protocol": "eval-4f2a",
    "source": "synthetic",
}

#: The CSV header the upload accepts (protocol, source and recipe may be left out or empty).
CSV_COLUMNS = ("run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss")
CSV_OPTIONAL = ("protocol", "source", "recipe")
EXAMPLE_CSV = (
    "run_id,family,method,n0,rho,l0,tokens,loss,protocol,source\n"
    "llama-1b-depth-0.25,llama-3,depth,1e9,0.25,2.5,1e8,2.70,eval-4f2a,synthetic\n"
    "llama-1b-depth-0.25,llama-3,depth,1e9,0.25,2.5,2e8,2.66,eval-4f2a,synthetic\n"
)


class ObservationIn(BaseModel):
    """One observed loss; (run_id, tokens) identifies it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_OBSERVATION]})

    run_id: str = Field(
        ..., min_length=1, max_length=128, pattern=NO_NUL, description="The run (one curve)."
    )
    family: str = Field(
        ..., min_length=1, max_length=64, pattern=NO_NUL, description="Model family label."
    )
    method: str = Field(
        ..., min_length=1, max_length=32, pattern=NO_NUL, description="Pruning method label."
    )
    n0: N0
    rho: Rho
    l0: L0
    tokens: Tokens
    loss: Loss
    protocol: str | None = Field(
        None, max_length=256, pattern=NO_NUL, description="Fingerprint of the evaluation protocol."
    )
    source: str | None = Field(
        None, max_length=64, pattern=NO_NUL, description="Where the point came from."
    )
    recipe: Recipe = Field(
        "full", description="How the pruned model was post-trained (full, lora, distill)."
    )


class ObservationsIn(BaseModel):
    """A batch of observations (JSON form of the upload)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"observations": [EXAMPLE_OBSERVATION]}]}
    )

    observations: list[ObservationIn] = Field(..., min_length=1, max_length=200_000)


class ObservationsCreated(BaseModel):
    """How many rows were stored and how many were already there (same run_id and tokens)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inserted": 2, "duplicates": 0}]})

    inserted: int
    duplicates: int


class ObservationOut(BaseModel):
    """A stored observation."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: str
    family: str
    method: str
    n0: float
    rho: float
    l0: float
    tokens: float
    loss: float
    protocol: str
    source: str
    # Defaulted so that a client reads the answer of a service from before recipes (all full).
    recipe: str = "full"
    excluded: bool
    note: str | None
    created_at: datetime


class ObservationPage(Page[ObservationOut]):
    """A page of observations."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            **EXAMPLE_OBSERVATION,
                            "recipe": "full",
                            "id": 1,
                            "excluded": False,
                            "note": None,
                            "created_at": "2026-01-01T00:00:00Z",
                        }
                    ],
                    "total": 1,
                    "offset": 0,
                    "limit": 100,
                }
            ]
        }
    )
