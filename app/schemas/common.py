"""Shared field types and error/page models of the HTTP API.

Every float in a request is finite (`allow_inf_nan=False`): JSON's `NaN`, `Infinity` and `1e400`
(which parses to infinity) are rejected with a 422 instead of reaching the law. Raw counts
(`n0`, `tokens`) are parameters and tokens, never billions (docs/law.md §1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.recipes import RecipeName

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
#: A recovery recipe by name (app.core.recipes): how the pruned model was post-trained.
Recipe = Annotated[
    RecipeName,
    Field(
        description="Recovery recipe: full (every weight trains), lora (adapters on frozen "
        "weights) or distill (from the dense model); a fit never mixes recipes.",
    ),
]
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


def null_or_absent(*names: str) -> dict[str, Any]:
    """JSON Schema for: each of these fields is left out or null (the model reads both as
    not given)."""
    return {"properties": {name: {"type": "null"} for name in names}}


def with_rules(
    examples: list[dict[str, Any]], *rules: dict[str, Any] | Callable[[], dict[str, Any]]
) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` that adds `examples` and the request's cross-field rules as
    `allOf` of JSON Schema (`oneOf` of the allowed shapes), so that what the model validators
    refuse is refused by the OpenAPI schema too. A rule may be a function, for rules built from
    the form registry when the schema is generated."""

    def extra(schema: dict[str, Any]) -> None:
        schema["examples"] = examples
        schema["allOf"] = [rule() if callable(rule) else rule for rule in rules]

    return extra


def _form_shape(name: str) -> dict[str, Any]:
    """The `law` object of one registered form: its exact parameter names, and ≥ 0 where the
    form takes a parameter's log. `p2` is also the shape of a law that leaves `form` out."""
    from app.law.forms import FORMS, CurveForm

    form = FORMS[name]
    shape: dict[str, Any] = {"title": name, "properties": {"form": {"const": name}}}
    if name != "p2":
        shape["required"] = ["form"]
    if isinstance(form, CurveForm):
        # One power law per run: E@<run>, B@<run>, beta@<run> and the run's n0@, rho@, l0@.
        # That each run has all six keys is checked by the service (a 422 naming them).
        keys = "|".join(CurveForm._run_keys)
        shape["properties"]["params"] = {
            "minProperties": len(CurveForm._run_keys),
            "propertyNames": {"pattern": f"^({keys})@"},
            "patternProperties": {"^(E|B)@": {"minimum": 0}},
        }
        return shape
    shape["properties"]["params"] = {
        "required": list(form.param_names),
        "properties": {
            p: {"minimum": 0} if p in form.nonnegative_params else {} for p in form.param_names
        },
        "additionalProperties": False,
    }
    return shape


def form_enum(schema: dict[str, Any], *extra: str) -> None:
    """State in a `form` field's schema which names are accepted: the registered forms (from
    the registry when the schema is generated), plus `extra`."""
    from app.law.forms import FORMS

    schema["enum"] = [*FORMS, *extra]


def law_forms() -> dict[str, Any]:
    """JSON Schema of an inline law: exactly one registered form with exactly its parameters."""
    from app.law.forms import FORMS

    return {"oneOf": [_form_shape(name) for name in FORMS]}


def _named_numbers(schema: dict[str, Any]) -> None:
    """`dict[Label, float]` as JSON Schema: every value a number, every name a Label. Pydantic
    states the name's pattern as `patternProperties`, which leaves a name outside the pattern
    (one with a NUL) free to carry any value; the schema would accept what validation refuses."""
    for pattern, values in schema.pop("patternProperties", {}).items():
        schema.setdefault("propertyNames", {})["pattern"] = pattern
        schema["additionalProperties"] = values


class LawSpec(BaseModel):
    """An inline law: a registered form and its parameters (billions convention, docs/law.md §1)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=with_rules([EXAMPLE_LAW], law_forms)
    )

    form: str = Field(
        "p2",
        description="A registered form: p2, frantar, compression, curve, p2-tpp, p2-shift.",
        json_schema_extra=form_enum,
    )
    params: dict[Label, FiniteFloat] = Field(
        ...,
        max_length=10_000,
        description="The form's parameters by name; all required, finite.",
        json_schema_extra=_named_numbers,
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


def unprocessable(*cases: str) -> dict[int | str, dict[str, Any]]:
    """An operation's 422, listing the refusals its schema cannot state: rules that compare one
    field with another (JSON Schema has no way to), and those that depend on stored data or on
    the law's values. Request validation answers `detail` as a list of problems with their
    locations; the service answers a message string."""
    listed = "".join(f"\n- {case}" for case in cases)
    return {
        422: {
            "model": ErrorResponse,
            "description": "Invalid request (`detail`: a list of problems with their locations), "
            "or a request that cannot be answered (`detail`: a message). Besides what the "
            f"request schema refuses:{listed}",
        }
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
