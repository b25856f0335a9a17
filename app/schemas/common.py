"""Shared field types and error/page models of the HTTP API.

Every float in a request is finite (`allow_inf_nan=False`): JSON's `NaN`, `Infinity` and `1e400`
(which parses to infinity) are rejected with a 422 instead of reaching the law. Raw counts
(`n0`, `tokens`) are parameters and tokens, never billions (docs/law.md §1).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Text fields refuse NUL characters: PostgreSQL cannot store them (it would be a 500).
NO_NUL = r"^[^\x00]*$"

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(allow_inf_nan=False, gt=0)]
N0 = Annotated[
    float,
    Field(allow_inf_nan=False, gt=0, description="Parameters of the dense model (raw count, > 0)."),
]
Rho = Annotated[
    float,
    Field(
        allow_inf_nan=False,
        gt=0,
        lt=1,
        description="Pruning rate: fraction of N0 removed, strictly between 0 and 1.",
    ),
]
L0 = Annotated[
    float,
    Field(allow_inf_nan=False, gt=0, description="Dense model's loss (nats per token, > 0)."),
]
Tokens = Annotated[
    float,
    Field(allow_inf_nan=False, gt=0, description="Post-training tokens (raw count, > 0)."),
]
Loss = Annotated[float, Field(allow_inf_nan=False, gt=0, description="Loss (nats/token, > 0).")]
Level = Annotated[
    float,
    Field(
        allow_inf_nan=False,
        gt=0,
        lt=1,
        description="Central interval level, strictly between 0 and 1 (e.g. 0.8).",
    ),
]
Label = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
IntervalKind = Annotated[
    Literal["prediction", "confidence"],
    Field(
        description="prediction (default): where a new run's loss will land, calibrated on "
        "held-out runs; confidence: where the mean curve lies (bootstrap only). docs/law.md §4.",
    ),
]

T = TypeVar("T")

EXAMPLE_LAW: dict[str, Any] = {
    "form": "p2",
    "params": {
        "N_C": 0.5,
        "D_C": 0.02,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    },
}


class LawSpec(BaseModel):
    """An inline law: a registered form and its parameters (billions convention, docs/law.md §1)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_LAW]})

    form: str = Field("p2", description="A registered form: p2, frantar, compression, curve.")
    params: dict[Label, FiniteFloat] = Field(
        ..., max_length=10_000, description="The form's parameters by name; all required, finite."
    )

    @field_validator("form")
    @classmethod
    def _known_form(cls, value: str) -> str:
        from app.law.forms import FORMS

        if value not in FORMS:
            raise ValueError(f"unknown form {value!r}; choose one of {sorted(FORMS)}")
        return value


class ErrorResponse(BaseModel):
    """Every error: `detail` is a message, or for request validation a list of problems."""

    model_config = ConfigDict(extra="allow")

    detail: str | list[dict[str, Any]] = Field(..., description="What went wrong.")


#: Documented error responses shared by the routes (the 422 replaces FastAPI's default schema,
#: since the service's own 422s carry a message string).
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body or a list in it is over a limit."},
    422: {"model": ErrorResponse, "description": "Invalid request or a law that cannot answer."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "A fit named by the request does not exist."}
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API_KEY is set and X-API-Key is missing/wrong."}
}


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total count across pages."""

    items: list[T]
    total: int = Field(..., ge=0, description="Rows matching the filters, across all pages.")
    offset: int = Field(..., ge=0)
    limit: int = Field(..., ge=1)
