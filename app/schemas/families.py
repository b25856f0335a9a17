"""`GET /families`: what the stored observations cover, per family and per method."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Span = tuple[float, float]

_EXAMPLE_METHOD: dict[str, Any] = {
    "method": "depth",
    "recipe": "full",
    "n_runs": 12,
    "n_observations": 126,
    "n0": [25360, 211424],
    "rho": [0.1677, 0.3382],
    "l0": [3.044, 4.666],
    "tokens": [2048, 210944],
    "default_fit_id": "c2fff5e7a37a59cc8d14f52d4f719065",
    "default_form": "p2",
}
EXAMPLE_FAMILY: dict[str, Any] = {
    "family": "wide-llama",
    "reference": True,
    "protocols": ["eval:2d54c8c059537bd3:seq128:n16384"],
    "recipes": ["full"],
    "n_runs": 35,
    "n_observations": 368,
    "n0": [25360, 211424],
    "rho": [0.1498, 0.3505],
    "l0": [3.044, 4.666],
    "tokens": [2048, 210944],
    "methods": [_EXAMPLE_METHOD],
}


class _Coverage(BaseModel):
    """Runs, points and the span of each variable of some kept observations (n0 in parameters,
    tokens in tokens, as everywhere in the API)."""

    n_runs: int = Field(..., ge=0, description="Runs (distinct run_id).")
    n_observations: int = Field(..., ge=0, description="Kept points (excluded ones left out).")
    n0: Span = Field(..., description="[smallest, largest] dense size, in parameters.")
    rho: Span = Field(..., description="[smallest, largest] measured pruning rate.")
    l0: Span = Field(..., description="[smallest, largest] dense loss, nats per token.")
    tokens: Span = Field(..., description="[fewest, most] post-training tokens of a point.")


class MethodSummary(_Coverage):
    """One pruning method of a family under one recovery recipe, and the law that answers for
    them by default."""

    method: str
    recipe: str = Field(
        ..., description="The recovery recipe of these runs (one entry per method and recipe)."
    )
    default_fit_id: str | None = Field(
        None,
        description="The default fit of (family, method, recipe): what /predict uses by default.",
    )
    default_form: str | None = Field(None, description="That fit's form.")


class FamilySummary(_Coverage):
    """One family: its spans over every method, and each method."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_FAMILY]})

    family: str
    reference: bool = Field(
        ..., description="Every point of this family came with the service (reference data)."
    )
    protocols: list[str] = Field(..., description="Evaluation protocols of its losses.")
    recipes: list[str] = Field(
        ..., description="Recovery recipes of its runs (full, lora, distill; full first)."
    )
    methods: list[MethodSummary] = Field(
        ..., description="One entry per (method, recipe), by method name then recipe."
    )


class FamiliesOut(BaseModel):
    """Every family with stored observations, in name order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"families": [EXAMPLE_FAMILY]}]})

    families: list[FamilySummary]
