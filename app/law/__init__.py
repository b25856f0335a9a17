"""The P² law engine: forms, fitting, metrics, bootstrap, recommendations and planning.

Pure science on numpy and scipy, with threadpoolctl to keep BLAS at one thread while it
optimises (a test asserts that importing it pulls in no web, database or torch module). Raw
counts in (n0 in parameters, tokens in tokens); each form converts to its own units
(docs/law.md §1).
"""

from app.law.bootstrap import predict_interval, refit_runs
from app.law.errors import LawError, NotEnoughData, UnknownForm, UnreachableTarget
from app.law.fitting import fit
from app.law.forms import DEFAULT_FORM, FORMS, Form, get_form, register
from app.law.law import FittedLaw
from app.law.metrics import asd, evaluate, split
from app.law.plan import PlanCandidate, PlanOption, PlanResult, plan
from app.law.ranges import from_dataset, warnings_for
from app.law.recommend import loss_curve, recommend
from app.law.types import (
    Dataset,
    Features,
    FitResult,
    HoldOut,
    Metrics,
    Ranges,
    Recommendation,
    Rule,
)

__all__ = [
    "DEFAULT_FORM",
    "FORMS",
    "Dataset",
    "Features",
    "FitResult",
    "FittedLaw",
    "Form",
    "HoldOut",
    "LawError",
    "Metrics",
    "NotEnoughData",
    "PlanCandidate",
    "PlanOption",
    "PlanResult",
    "Ranges",
    "Recommendation",
    "Rule",
    "UnknownForm",
    "UnreachableTarget",
    "asd",
    "evaluate",
    "fit",
    "from_dataset",
    "get_form",
    "loss_curve",
    "plan",
    "predict_interval",
    "recommend",
    "refit_runs",
    "register",
    "split",
    "warnings_for",
]
