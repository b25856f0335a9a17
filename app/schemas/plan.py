"""Request and response of `POST /plan`: joint choice of method, ρ and tokens (docs/law.md §7)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import L0, N0, IntervalKind, Label, Level, Recipe, Rho, Tokens

#: Plans on a family shipped with the service (docs/law.md §8): they answer on a fresh install.
EXAMPLE_PLAN: dict[str, Any] = {
    "family": "wide-llama",
    "n0": 211424.0,
    "l0": 3.044,
    "rho_min": 0.2,
    "token_budget": 2.0e5,
    "interval": 0.8,
}
EXAMPLE_PLAN_GRIDS: dict[str, Any] = {
    "family": "wide-llama",
    "methods": ["depth", "width"],
    "n0": 211424.0,
    "l0": 3.044,
    "rho_min": 0.25,
    "token_budget": 2.0e5,
    "rho_grid": [0.25, 0.3, 0.35],
    "token_grid": [5.0e4, 1.0e5, 2.0e5],
    "max_options": 10,
}


class PlanRequest(BaseModel):
    """Given a dense model, the methods and recipes with default fits, a size limit and a token
    budget, rank (method, recipe, ρ, tokens) options by predicted loss."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [EXAMPLE_PLAN, EXAMPLE_PLAN_GRIDS]},
    )

    family: Label = Field(..., description="Model family whose default fits are used.")
    methods: list[Label] | None = Field(
        None,
        max_length=32,
        description="Methods to compare; default: every method with a default fit for the family.",
    )
    recipes: list[Recipe] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Recovery recipes to compare (full, lora, distill); default: every recipe "
        "with a default fit for the family.",
    )
    n0: N0
    l0: L0
    rho_min: Rho = Field(
        ..., description="Least pruning rate acceptable (size limit): ρ ≥ rho_min."
    )
    token_budget: Tokens = Field(..., description="Most post-training tokens affordable.")
    rho_grid: list[Rho] | None = Field(
        None, min_length=1, max_length=200, description="ρ values to try (default: a grid)."
    )
    token_grid: list[Tokens] | None = Field(
        None, min_length=1, max_length=200, description="Token counts to try (default: a grid)."
    )
    interval: Level | None = Field(None, description="Interval level (needs bootstrap refits).")
    interval_kind: IntervalKind = "prediction"
    max_options: int = Field(50, ge=1, le=1000, description="How many ranked options to return.")

    @model_validator(mode="after")
    def _grids_within_limits(self) -> PlanRequest:
        if self.rho_grid is not None and not any(r >= self.rho_min for r in self.rho_grid):
            raise ValueError("rho_grid has no value >= rho_min")
        if self.token_grid is not None and not any(t <= self.token_budget for t in self.token_grid):
            raise ValueError("token_grid has no value <= token_budget")
        return self


class PlanOptionOut(BaseModel):
    """One (method, recipe, ρ, tokens) choice, what the law predicts for it and what its
    post-training costs."""

    method: str
    recipe: str = Field(..., description="The recovery recipe whose default fit predicted it.")
    fit_id: str | None = Field(None, description="The default fit that predicted this option.")
    rho: float
    tokens: float
    predicted_loss: float
    lower: float | None
    upper: float | None
    n_after: float = Field(..., description="Parameters left after pruning: n0 · (1 − ρ).")
    flops: float = Field(
        ...,
        description="Training FLOPs of the option's post-training: tokens × the recipe's FLOPs "
        "per token from parameter counts (full 6·N, lora 4·N, distill 6·N + 2·n0; N = n_after "
        "for depth and width, n0 for 2:4 and unstructured, which train masked weights densely; "
        "docs/law.md §7).",
    )
    beyond_observed: float | None = Field(
        None,
        description=(
            "How far `tokens` lies beyond the most post-training tokens the method's fit "
            "observed, as a factor (1 at its last observed checkpoint, below 1 inside the "
            "data; above 10 the answer is an extrapolation and the plan warns). Null when the "
            "fit records no tokens."
        ),
    )


class PlanResponse(BaseModel):
    """Options ranked by predicted loss (best first) and the best one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "options": [
                        {
                            "method": "width",
                            "recipe": "full",
                            "fit_id": "3f2a9c0e6b1d4e7f8a9b0c1d2e3f4a5b",
                            "rho": 0.2,
                            "tokens": 5.0e9,
                            "predicted_loss": 2.31,
                            "lower": 2.29,
                            "upper": 2.34,
                            "n_after": 6.424e9,
                            "flops": 1.927e20,
                            "beyond_observed": 1.0,
                        }
                    ],
                    "best": {
                        "method": "width",
                        "recipe": "full",
                        "fit_id": "3f2a9c0e6b1d4e7f8a9b0c1d2e3f4a5b",
                        "rho": 0.2,
                        "tokens": 5.0e9,
                        "predicted_loss": 2.31,
                        "lower": 2.29,
                        "upper": 2.34,
                        "n_after": 6.424e9,
                        "flops": 1.927e20,
                        "beyond_observed": 1.0,
                    },
                    "methods": ["depth", "width"],
                    "recipes": ["full"],
                    "warnings": [],
                }
            ]
        }
    )

    options: list[PlanOptionOut]
    best: PlanOptionOut | None
    methods: list[str] = Field(..., description="Methods that had a default fit and were compared.")
    recipes: list[str] = Field(
        ..., description="Recovery recipes that had a default fit and were compared."
    )
    warnings: list[str]
