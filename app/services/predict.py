"""Use-case behind `POST /predict`: vectorised predictions with intervals and range warnings."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.law.intervals import Continued, continuation_note, continued, forecast
from app.law.intervals import interval as interval_band
from app.law.law import FittedLaw
from app.law.ranges import warnings_for
from app.law.types import Features, FloatArray
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
    law: FittedLaw, x: Features, *, family: str | None = None, method: str | None = None
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


def interval_kind_for(law: FittedLaw, kind: IntervalKind, warnings: list[str]) -> IntervalKind:
    """The kind of interval `law` can give when `kind` is asked: a prediction interval needs
    a calibrated fit, else the confidence interval is given with a warning saying so."""
    if kind == "prediction" and not law.calibrated:
        warnings.append(UNCALIBRATED)
        return "confidence"
    return kind


def interval(
    law: FittedLaw,
    x: Features,
    level: float | None,
    kind: IntervalKind,
    warnings: list[str],
    *,
    center: FloatArray | None = None,
    runs: Continued | None = None,
) -> tuple[list[float] | None, list[float] | None]:
    """The interval of `kind` at `level` (docs/law.md §4), or (None, None) with a warning why
    there is none. `center` (the law's prediction at `x`) and `runs` (the fitted runs `x`
    continues) may pass what the caller has."""
    if level is None:
        return None, None
    if not law.refits:
        warnings.append(NO_REFITS)
        return None, None
    band = interval_band(
        law,
        x,
        level=level,
        kind=interval_kind_for(law, kind, warnings),
        center=center,
        runs=runs,
    )
    warnings.extend(band.notes)
    return finite_list(band.lower, "lower bound"), finite_list(band.upper, "upper bound")


def predict(
    request: PredictRequest, session: Session | None = None, ref: LawRef | None = None
) -> dict[str, Any]:
    """Predicted losses for the request's points, with interval and warnings (docs/api.md).
    `ref` is the request's law when the caller has already resolved it."""
    x = request_features(request)
    if ref is None:
        ref = resolve_law(request, session)
    law = ref.law
    runs = continued(law.calibration, x)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        center = law.form.predict(law.params, x)
        loss = finite_list(forecast(law, x, center=center, runs=runs), "loss")
    warnings = range_warnings(law, x, family=request.family, method=request.method)
    warnings += continuation_note(law.calibration, x, runs)
    lower, upper = interval(
        law, x, request.interval, request.interval_kind, warnings, center=center, runs=runs
    )
    return {
        "form": law.form.name,
        "fit_id": ref.fit_id,
        "loss": loss,
        "lower": lower,
        "upper": upper,
        "warnings": warnings,
    }
