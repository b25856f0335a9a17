"""Use-case behind `POST /predict`: vectorised predictions with intervals and range warnings."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.law.bootstrap import predict_interval
from app.law.ranges import warnings_for
from app.law.types import Features
from app.schemas.predict import PredictRequest
from app.services.convert import features, finite_list, points_to_features
from app.services.lawref import LawRef, resolve_law


def request_features(request: PredictRequest) -> Features:
    """The request's points as columns, in input order; 413 above the configured limit."""
    limit = get_settings().max_points
    if request.n_points > limit:
        raise PayloadTooLarge(
            f"{request.n_points} points in one request; the limit is {limit}: split the request"
        )
    if request.points is not None:
        return points_to_features(request.points)
    assert request.columns is not None
    c = request.columns
    return features(c.n0, c.rho, c.l0, c.tokens)


def range_warnings(
    law: LawRef, x: Features, *, family: str | None = None, method: str | None = None
) -> list[str]:
    """Warnings for points outside the data the fit saw (none for an inline law)."""
    if law.ranges is None:
        return []
    return warnings_for(law.ranges, x, family=family, method=method)


def interval(
    law: LawRef, x: Features, level: float | None, warnings: list[str]
) -> tuple[list[float] | None, list[float] | None]:
    """Bootstrap percentile interval at `level`, or (None, None) with a warning why not."""
    if level is None:
        return None, None
    if not law.refits:
        warnings.append(
            "no interval: the law has no bootstrap refits (fit with bootstrap > 0 to get one)"
        )
        return None, None
    lower, upper = predict_interval(law.form.name, list(law.refits), x, level)
    return finite_list(lower, "lower bound"), finite_list(upper, "upper bound")


def predict(request: PredictRequest, session: Session | None = None) -> dict[str, Any]:
    """Predicted losses for the request's points, with interval and warnings (docs/api.md)."""
    x = request_features(request)
    law = resolve_law(request, session)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss = finite_list(law.form.predict(law.params, x), "loss")
    warnings = range_warnings(law, x, family=request.family, method=request.method)
    lower, upper = interval(law, x, request.interval, warnings)
    return {
        "form": law.form.name,
        "fit_id": law.fit_id,
        "loss": loss,
        "lower": lower,
        "upper": upper,
        "warnings": warnings,
    }
