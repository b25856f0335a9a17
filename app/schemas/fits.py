"""Fits of a law to stored observations (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import NO_NUL, Page, Recipe, form_enum, with_rules

#: The `form` value that chooses a form by cross-validated held-out error.
AUTO_FORM = "auto"


class Holdout(BaseModel):
    """A generalisation protocol (docs/law.md §6) whose held-out metrics are reported."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["D", "N0", "rho", "rho-paper"] = Field(
        description="`D`: the last 20% of each run's checkpoints held out; `N0`: the largest "
        "size of each family; `rho`: the highest ρ level present (levels found by clustering "
        "the measured ρ); `rho-paper`: the paper's fixed split (fit ρ ≈ 0.15/0.25, test "
        "ρ ≈ 0.35, within 0.02). A protocol whose data has a single level is a 422."
    )


#: `select_by` only with `"form": "auto"` (`_select_by_needs_auto`), as JSON Schema.
SELECT_BY_NEEDS_AUTO: dict[str, Any] = {
    "oneOf": [
        {
            "title": "one form (no select_by)",
            "properties": {"form": {"not": {"const": AUTO_FORM}}, "select_by": {"type": "null"}},
        },
        {
            "title": "form chosen by held-out error",
            "required": ["form"],
            "properties": {"form": {"const": AUTO_FORM}},
        },
    ]
}


def _form_or_auto(schema: dict[str, Any]) -> None:
    form_enum(schema, AUTO_FORM)


class FitCreate(BaseModel):
    """Fit a form to the observations selected by family, method and run ids.

    The selection must hold one evaluation protocol: a mix is refused with a 422 naming the
    protocols (docs/law.md §3: a fit never mixes protocols silently)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=with_rules(
            [
                {
                    "form": "p2",
                    "family": "llama-3",
                    "method": "depth",
                    "bootstrap": 50,
                    "holdout": {"protocol": "D"},
                    "make_default": True,
                }
            ],
            SELECT_BY_NEEDS_AUTO,
        ),
    )

    form: str = Field(
        "p2",
        description="A registered form (p2, frantar, compression, curve, p2-tpp, p2-shift), "
        "or `auto`: fit every registered form and keep the one with the lowest cross-validated "
        "held-out error for the use named by `select_by` (docs/law.md §4).",
        json_schema_extra=_form_or_auto,
    )
    select_by: Literal["D", "N0", "rho", "rho-paper", "runs"] | None = Field(
        None,
        description="With form `auto` only: the use the form is chosen for. `D`: the last 20% "
        "of each run held out; `N0`: the largest size present; `rho`: the highest ρ level "
        "present; `rho-paper`: the paper's split (ρ ≈ 0.35 held out, ρ ≈ 0.15/0.25 fit); "
        "`runs`: whole runs, grouped K-fold (K = min(5, runs)). Default with `auto`: `runs`.",
    )
    family: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=NO_NUL,
        description="Only observations of this family.",
    )
    method: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        pattern=NO_NUL,
        description="Only observations of this method.",
    )
    run_ids: list[Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)]] | None = (
        Field(None, min_length=1, max_length=10_000, description="Only these runs.")
    )
    recipe: Recipe = Field(
        "full",
        description="Only observations of this recovery recipe (a fit never mixes recipes); "
        "default: full.",
    )
    bootstrap: int = Field(
        0, ge=0, le=1000, description="Refits on runs resampled with replacement."
    )
    holdout: Holdout | None = Field(None, description="Also report held-out metrics.")
    make_default: bool = Field(
        False,
        description="Make this the default fit of its family, method and recipe (the first fit "
        "of one becomes its default anyway).",
    )
    include_excluded: bool = Field(False, description="Also use observations marked excluded.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the bootstrap resampling.")
    interval: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Level at which the coverage of the fit's intervals is measured on each "
        "protocol (with bootstrap > 0; docs/law.md §4).",
    )
    measure_coverage: bool = Field(
        True,
        description="Measure the intervals' coverage on each protocol (a few seconds; the "
        "calibration itself is always made when bootstrap > 0).",
    )

    @field_validator("form")
    @classmethod
    def _known_form(cls, value: str) -> str:
        from app.law.forms import FORMS

        if value != AUTO_FORM and value not in FORMS:
            raise ValueError(
                f"unknown form {value!r}; choose one of {sorted(FORMS)} or {AUTO_FORM!r}"
            )
        return value

    @model_validator(mode="after")
    def _select_by_needs_auto(self) -> FitCreate:
        if self.select_by is not None and self.form != AUTO_FORM:
            raise ValueError(
                f'select_by chooses among forms and needs "form": "{AUTO_FORM}" '
                f"(form is {self.form!r}); leave select_by out to fit {self.form!r}"
            )
        return self


class MetricsOut(BaseModel):
    """Goodness of fit (docs/law.md §5); null where undefined (e.g. ASD with one point per run)."""

    r2: float | None
    rmse: float | None
    mape: float | None
    huber: float | None
    asd: float | None


EXAMPLE_FIT: dict[str, Any] = {
    "id": "3f2a9c0e6b1d4e7f8a9b0c1d2e3f4a5b",
    "form": "p2",
    "family": "llama-3",
    "method": "depth",
    "protocol": "eval-4f2a",
    "recipe": "full",
    "run_ids": ["llama-1b-depth-0.25"],
    "params": {
        "N_C": 0.5,
        "D_C": 0.02,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    },
    "objective": 1.2e-4,
    "converged": True,
    "message": "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
    "n_starts": 64,
    "n_observations": 135,
    "n_runs": 9,
    "metrics": {"r2": 0.998, "rmse": 0.004, "mape": 0.12, "huber": 1.2e-4, "asd": 0.01},
    "holdout_protocol": "D",
    "holdout_metrics": {"r2": 0.99, "rmse": 0.006, "mape": 0.2, "huber": 3e-5, "asd": 0.02},
    "ranges": {
        "n0": [5.0e8, 8.0e9],
        "rho": [0.15, 0.35],
        "l0": [2.1, 3.0],
        "tokens": [1.0e7, 3.0e9],
        "families": ["llama-3"],
        "methods": ["depth"],
        "protocols": ["eval-4f2a"],
    },
    "bootstrap": 50,
    "coverage": [
        {
            "protocol": "D",
            "level": 0.8,
            "prediction": 0.81,
            "confidence": 0.35,
            "points": 27,
            "runs": 9,
            "mape": 0.74,
        }
    ],
    "interval_notes": [],
    "is_default": True,
    "created_at": "2026-01-01T00:00:00Z",
}


class CoverageOut(BaseModel):
    """Share of one protocol's held-out points inside the intervals at `level`."""

    protocol: Literal["D", "N0", "rho", "rho-paper"] = Field(
        description="`D`: the last 20% of each run's checkpoints held out; `N0`: the largest "
        "size of each family; `rho`: the highest ρ level present (levels found by clustering "
        "the measured ρ); `rho-paper`: the paper's fixed split (fit ρ ≈ 0.15/0.25, test "
        "ρ ≈ 0.35, within 0.02). A protocol whose data has a single level is a 422."
    )
    level: float
    prediction: float = Field(..., description="Coverage of the prediction interval (default).")
    confidence: float | None = Field(
        None, description="Coverage of the confidence interval of the mean curve."
    )
    points: int = Field(..., description="Held-out points counted.")
    runs: int = Field(..., description="Held-out runs they belong to.")
    mape: float | None = Field(
        None, description="The law's held-out MAPE (%) on this protocol, fitted on its train side."
    )


class SelectionFoldOut(BaseModel):
    """One fold of a form comparison: its name and the points and runs on each side."""

    name: str
    n_train: int
    n_test: int
    train_runs: int
    test_runs: int
    evidence: bool = Field(
        True,
        description="Whether the fit side holds 2 or more levels of the variable held out; a "
        "fold without them is no evidence against p2 (docs/law.md §4).",
    )


class SelectionRowOut(BaseModel):
    """One form's held-out error on each fold (in the order of `folds`) and the mean."""

    form: str
    mape: list[float | None] = Field(
        ..., description="Held-out MAPE per fold, in percent (null where not tested)."
    )
    rmse: list[float | None] = Field(..., description="Held-out RMSE per fold, in nats.")
    mean_mape: float | None = Field(..., description="Mean over the folds; what is minimised.")
    mean_rmse: float | None
    reason: str | None = Field(
        None, description="Why the form could not be fitted or could not predict a fold."
    )
    run_mape: list[float] = Field(
        default_factory=list,
        description="Held-out MAPE (%) of each held-out run of each fold (fold order, then run "
        "order): the units the one-standard-error rule pairs against p2's.",
    )
    run_fold: list[int] = Field(
        default_factory=list,
        description="The fold (index into `folds`) of each entry of `run_mape`.",
    )


class SelectionOut(BaseModel):
    """How an `auto` fit chose its form (docs/law.md §4)."""

    select_by: Literal["D", "N0", "rho", "rho-paper", "runs"]
    chosen: str
    why: str | None = Field(None, description="Why `chosen` was kept, in words.")
    metric: str
    rule: str | None = Field(
        None, description="How the form was chosen from the table (docs/law.md §4)."
    )
    folds: list[SelectionFoldOut]
    table: list[SelectionRowOut]


class FitOut(BaseModel):
    """A stored fit."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_FIT]})

    id: str
    form: str
    family: str | None
    method: str | None
    protocol: str | None
    recipe: str = Field(..., description="The recovery recipe of every observation fitted.")
    run_ids: list[str]
    params: dict[str, float]
    objective: float | None
    converged: bool
    message: str
    n_starts: int
    n_observations: int
    n_runs: int
    metrics: MetricsOut
    holdout_protocol: str | None
    holdout_metrics: MetricsOut | None
    ranges: dict[str, Any]
    bootstrap: int = Field(..., description="Number of bootstrap refits stored with the fit.")
    coverage: list[CoverageOut] = Field(
        default_factory=list,
        description="Measured coverage of the fit's intervals per protocol (fits with a "
        "bootstrap; a protocol the data do not allow is absent).",
    )
    interval_notes: list[str] = Field(
        default_factory=list,
        description="What the calibration of the prediction intervals could not measure.",
    )
    selection: SelectionOut | None = Field(
        None,
        description="For a fit made with form `auto`: every form's held-out error per fold and "
        "the form kept (named in `form`); null for other fits.",
    )
    is_default: bool
    created_at: datetime


class FitPage(Page[FitOut]):
    """A page of fits, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [EXAMPLE_FIT], "total": 1, "offset": 0, "limit": 50}]
        }
    )
