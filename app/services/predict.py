"""Use-case behind `POST /predict`: vectorised predictions with intervals and range warnings."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.law.bootstrap import predict_interval
from app.law.intervals import Calibration
from app.law.intervals import interval as interval_band
from app.law.ranges import warnings_for
from app.law.types import Features
from app.schemas.common import IntervalKind
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


NO_REFITS = "no interval: the law has no bootstrap refits (fit with bootstrap > 0 to get one)"
UNCALIBRATED = (
    "this fit has no calibrated prediction interval (it was made before them): the "
    "confidence interval of the mean curve is given instead; refit to get one"
)


def calibration_for(law: LawRef, kind: IntervalKind, warnings: list[str]) -> Calibration | None:
    """The calibration a prediction interval uses, or None for the confidence interval (with a
    warning when a prediction interval was asked of a fit that has none)."""
    if kind == "confidence" or not law.refits:
        return None
    if law.calibration is None:
        warnings.append(UNCALIBRATED)
    return law.calibration


def interval(
    law: LawRef, x: Features, level: float | None, kind: IntervalKind, warnings: list[str]
) -> tuple[list[float] | None, list[float] | None]:
    """The interval of `kind` at `level` (docs/law.md §4), or (None, None) with a warning why
    there is none."""
    if level is None:
        return None, None
    if not law.refits:
        warnings.append(NO_REFITS)
        return None, None
    calibration = calibration_for(law, kind, warnings)
    if calibration is not None:
        band = interval_band(
            law.form.name, law.params, list(law.refits), calibration, x, level=level
        )
        warnings.extend(band.notes)
        lower, upper = band.lower, band.upper
    else:
        lower, upper = predict_interval(law.form.name, list(law.refits), x, level)
    return finite_list(lower, "lower bound"), finite_list(upper, "upper bound")


def predict(request: PredictRequest, session: Session | None = None) -> dict[str, Any]:
    """Predicted losses for the request's points, with interval and warnings (docs/api.md)."""
    x = request_features(request)
    law = resolve_law(request, session)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss = finite_list(law.form.predict(law.params, x), "loss")
    warnings = range_warnings(law, x, family=request.family, method=request.method)
    lower, upper = interval(law, x, request.interval, request.interval_kind, warnings)
    return {
        "form": law.form.name,
        "fit_id": law.fit_id,
        "loss": loss,
        "lower": lower,
        "upper": upper,
        "warnings": warnings,
    }
