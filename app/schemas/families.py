"""`GET /families`: what the stored observations cover, per family and per method."""

from __future__ import annotations

from pydantic import BaseModel, Field

Span = tuple[float, float]


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
    """One pruning method of a family, and the law that answers for it by default."""

    method: str
    default_fit_id: str | None = Field(
        None, description="The default fit of (family, method): what /predict uses by default."
    )
    default_form: str | None = Field(None, description="That fit's form.")


class FamilySummary(_Coverage):
    """One family: its spans over every method, and each method."""

    family: str
    reference: bool = Field(
        ..., description="Every point of this family came with the service (reference data)."
    )
    protocols: list[str] = Field(..., description="Evaluation protocols of its losses.")
    methods: list[MethodSummary]


class FamiliesOut(BaseModel):
    """Every family with stored observations, in name order."""

    families: list[FamilySummary]
