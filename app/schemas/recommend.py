"""Request and response of `POST /recommend` (docs/api.md, docs/law.md §7)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import (
    EXAMPLE_LAW,
    L0,
    N0,
    NO_NUL,
    IntervalKind,
    Level,
    Loss,
    PositiveFloat,
    Rho,
    Tokens,
    with_rules,
)
from app.schemas.predict import LAW_CHOICE, LawChoice

#: The arguments each rule needs (`_rule_arguments`), as JSON Schema: one shape per rule.
RULE_ARGUMENTS: dict[str, Any] = {
    "oneOf": [
        {
            "title": "marginal or gap: threshold",
            "required": ["rule", "threshold"],
            "properties": {"rule": {"enum": ["marginal", "gap"]}, "threshold": {"type": "number"}},
        },
        {
            "title": "target: target_loss",
            "required": ["rule", "target_loss"],
            "properties": {"rule": {"const": "target"}, "target_loss": {"type": "number"}},
        },
    ]
}


#: The target rule on the default fit of a shipped family (docs/law.md §8), with an interval.
EXAMPLE_RECOMMEND_TARGET: dict[str, Any] = {
    "family": "wide-llama",
    "method": "depth",
    "n0": 150000.0,
    "rho": 0.3,
    "l0": 3.3,
    "rule": "target",
    "target_loss": 3.45,
    "max_tokens": 1.0e7,
    "interval": 0.8,
}


#: The most checkpoints of a run a request may carry inline.
MAX_RUN_POINTS = 10_000


class RunPoint(BaseModel):
    """One checkpoint of the run being planned."""

    model_config = ConfigDict(extra="forbid")

    tokens: Tokens
    loss: Loss


class RecommendRequest(LawChoice):
    """How many post-training tokens one pruned model needs, by a rule."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=with_rules(
            [
                {
                    "law": EXAMPLE_LAW,
                    "n0": 1.0e9,
                    "rho": 0.25,
                    "l0": 2.5,
                    "rule": "gap",
                    "threshold": 0.01,
                },
                EXAMPLE_RECOMMEND_TARGET,
            ],
            LAW_CHOICE,
            RULE_ARGUMENTS,
        ),
    )

    n0: N0
    rho: Rho
    l0: L0
    rule: Literal["marginal", "gap", "target"] = Field(
        ...,
        description="marginal: -dL/dD <= threshold (nats per billion tokens); "
        "gap: L - floor <= threshold (nats); target: L <= target_loss.",
    )
    threshold: PositiveFloat | None = Field(None, description="For `marginal` and `gap`.")
    target_loss: Loss | None = Field(None, description="For `target`.")
    max_tokens: Tokens | None = Field(None, description="Cap on the answer (then capped=true).")
    interval: Level | None = Field(None, description="Interval level (needs bootstrap refits).")
    interval_kind: IntervalKind = "prediction"
    run_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="A stored run of this model (n0, rho, l0) whose first checkpoints anchor "
        "the answer (docs/law.md §7, answers anchored on a run).",
    )
    run_points: list[RunPoint] | None = Field(
        None,
        min_length=2,
        max_length=MAX_RUN_POINTS,
        description="The run's first checkpoints inline, instead of `run_id`.",
    )

    @model_validator(mode="after")
    def _rule_arguments(self) -> RecommendRequest:
        if self.run_id is not None and self.run_points is not None:
            raise ValueError("give at most one of `run_id` and `run_points`")
        if self.rule in ("marginal", "gap") and self.threshold is None:
            raise ValueError(f"rule {self.rule!r} needs `threshold`")
        if self.rule == "target" and self.target_loss is None:
            raise ValueError("rule 'target' needs `target_loss`")
        return self


class CurvePoint(BaseModel):
    """The law's loss at some token count, with its interval when available."""

    tokens: float
    loss: float
    lower: float | None
    upper: float | None


class Anchor(BaseModel):
    """What an answer anchored on the run's own checkpoints rests on."""

    run_id: str | None = Field(..., description="The stored run, or null for inline points.")
    points: int = Field(..., description="The run's checkpoints used.")
    last_tokens: float = Field(..., description="The run's last checkpoint: the anchor.")
    exponent: float = Field(..., description="b of L = L0 + A * D^(-b) beyond the anchor.")
    shape_from: str = Field(..., description="Where b comes from.")
    reference_runs: list[str] = Field(..., description="The runs whose course gave b.")
    beyond_run: float = Field(..., description="The answer / the run's last checkpoint tokens.")


class RecommendResponse(BaseModel):
    """The recommended tokens, the loss the law predicts there, and the curve around it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tokens": 1.52e9,
                    "predicted_loss": 2.6351,
                    "floor_loss": 2.6251,
                    "capped": False,
                    "tokens_interval": None,
                    "curve": [
                        {"tokens": 1.52e8, "loss": 2.6567, "lower": None, "upper": None},
                        {"tokens": 1.52e9, "loss": 2.6351, "lower": None, "upper": None},
                    ],
                    "warnings": [],
                    "beyond_observed": 2.3,
                    "anchor": None,
                }
            ]
        }
    )

    tokens: float
    predicted_loss: float
    floor_loss: float
    capped: bool
    tokens_interval: tuple[float, float | None] | None = Field(
        ...,
        description="[lo, hi] of the answer at the requested level; hi is null when the "
        "prediction band's upper edge never reaches a target (a run may not reach it at all).",
    )
    curve: list[CurvePoint]
    warnings: list[str]
    beyond_observed: float | None = Field(
        None,
        description="The answer / the most post-training tokens the fit observed (1.0 = its "
        "last checkpoint); null for an inline law. Beyond 10 the answer is an extrapolation "
        "(a warning says so).",
    )
    anchor: Anchor | None = Field(
        None, description="Set when the answer is anchored on the run's own checkpoints."
    )
