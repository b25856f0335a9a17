"""Request and response of `POST /predict` (docs/api.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from app.schemas.common import (
    EXAMPLE_LAW,
    L0,
    N0,
    NO_NUL,
    IntervalKind,
    Label,
    LawSpec,
    Level,
    Recipe,
    Rho,
    Tokens,
    null_or_absent,
    with_rules,
)


class Point(TypedDict):
    """One point to predict. A TypedDict, not a model: 100,000 of them validate without
    building an object each (the /predict hot path)."""

    n0: N0
    rho: Rho
    l0: L0
    tokens: Tokens


class Columns(BaseModel):
    """The same points as four equally long columns (the cheapest form to send and parse)."""

    model_config = ConfigDict(extra="forbid")

    n0: list[N0]
    rho: list[Rho]
    l0: list[L0]
    tokens: list[Tokens]

    @model_validator(mode="after")
    def _equal_lengths(self) -> Columns:
        lengths = {k: len(getattr(self, k)) for k in ("n0", "rho", "l0", "tokens")}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns must have equal lengths, got {lengths}")
        return self


#: The choice of a law as JSON Schema: a stored fit, an inline law, or the default fit of a
#: family and method; exactly one (`_at_most_one_law` and the service's "choose a law" 422 say
#: the same). `family` and `method` may come with any of them (range warnings).
LAW_CHOICE: dict[str, Any] = {
    "oneOf": [
        {
            "title": "a stored fit",
            "required": ["fit_id"],
            "properties": {"fit_id": {"type": "string"}, "law": {"type": "null"}},
        },
        {
            "title": "an inline law",
            "required": ["law"],
            "properties": {"law": {"type": "object"}, "fit_id": {"type": "null"}},
        },
        {
            "title": "the default fit of family and method",
            "required": ["family", "method"],
            "allOf": [
                {"properties": {"family": {"type": "string"}, "method": {"type": "string"}}},
                null_or_absent("fit_id", "law"),
            ],
        },
    ]
}


class LawChoice(BaseModel):
    """Which law answers: `fit_id`, or an inline `law`, or the default fit of family+method."""

    fit_id: str | None = Field(
        None, max_length=64, pattern=NO_NUL, description="A stored fit's id."
    )
    law: LawSpec | None = Field(None, description="An inline law instead of a stored fit.")
    family: Label | None = Field(
        None, description="Model family; with `method` and no fit_id/law, picks the default fit."
    )
    method: Label | None = Field(None, description="Pruning method (depth, width, 2:4, ...).")
    recipe: Recipe = Field(
        "full",
        description="Recovery recipe whose default fit answers with family and method (default "
        "full); given with `fit_id`, a stored fit of another recipe is a 422.",
    )

    @model_validator(mode="after")
    def _at_most_one_law(self) -> LawChoice:
        if self.fit_id is not None and self.law is not None:
            raise ValueError("give at most one of `fit_id` and `law`")
        return self


EXAMPLE_PREDICT: dict[str, Any] = {
    "law": EXAMPLE_LAW,
    "points": [
        {"n0": 1.0e9, "rho": 0.25, "l0": 2.5, "tokens": 1.0e8},
        {"n0": 8.03e9, "rho": 0.15, "l0": 2.1, "tokens": 3.0e9},
    ],
}


#: Exactly one of `points` and `columns` (`_exactly_one_input`), as JSON Schema.
POINTS_OR_COLUMNS: dict[str, Any] = {
    "oneOf": [
        {
            "title": "points",
            "required": ["points"],
            "properties": {"points": {"type": "array"}, "columns": {"type": "null"}},
        },
        {
            "title": "columns",
            "required": ["columns"],
            "properties": {"columns": {"type": "object"}, "points": {"type": "null"}},
        },
    ]
}


#: The default fit of a family shipped with the service (docs/law.md §8): answers on a fresh
#: install, so "Try it out" in /docs works at once.
EXAMPLE_PREDICT_DEFAULT: dict[str, Any] = {
    "family": "wide-llama",
    "method": "depth",
    "columns": {
        "n0": [150000.0, 150000.0],
        "rho": [0.3, 0.3],
        "l0": [3.3, 3.3],
        "tokens": [2.0e4, 2.0e5],
    },
    "interval": 0.8,
}


class PredictRequest(LawChoice):
    """Points (or columns) to predict with one law; optional interval from bootstrap refits."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=with_rules(
            [
                EXAMPLE_PREDICT,
                EXAMPLE_PREDICT_DEFAULT,
            ],
            LAW_CHOICE,
            POINTS_OR_COLUMNS,
        ),
    )

    points: list[Point] | None = Field(
        None, description="Points as objects; at most MAX_POINTS (100,000; 413 above)."
    )
    columns: Columns | None = Field(None, description="Points as columns (instead of `points`).")
    interval: Level | None = Field(
        None, description="Interval level; needs a fit with bootstrap refits."
    )
    interval_kind: IntervalKind = "prediction"

    @model_validator(mode="after")
    def _exactly_one_input(self) -> PredictRequest:
        if (self.points is None) == (self.columns is None):
            raise ValueError("give exactly one of `points` and `columns`")
        return self

    @property
    def n_points(self) -> int:
        """How many points the request holds."""
        if self.points is not None:
            return len(self.points)
        assert self.columns is not None
        return len(self.columns.n0)


class PredictResponse(BaseModel):
    """Predicted losses in input order, with an interval when the fit has bootstrap refits."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "form": "p2",
                    "fit_id": None,
                    "loss": [2.7022955896745358, 2.1585932581034935],
                    "lower": None,
                    "upper": None,
                    "warnings": [],
                }
            ]
        }
    )

    form: str
    fit_id: str | None
    loss: list[float]
    lower: list[float] | None
    upper: list[float] | None
    warnings: list[str]
