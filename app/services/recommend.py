"""Use-case behind `POST /recommend` (docs/law.md §7)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.law.anchored import RunCurve, anchored_loss, recommend_anchored, run_curve, runs_of
from app.law.intervals import continuation_note
from app.law.law import FittedLaw
from app.law.ranges import FAR_BEYOND, beyond_observed
from app.law.recommend import loss_curve
from app.law.recommend import recommend as recommend_tokens
from app.law.types import Dataset
from app.repositories import fits as fits_repo
from app.repositories import observations as observations_repo
from app.schemas.recommend import RecommendRequest
from app.services.convert import features, finite_float, finite_list, finite_or_none
from app.services.lawref import LawRef, resolve_law
from app.services.predict import NO_REFITS, interval_kind_for, range_warnings

#: The curve spans two decades below the answer and one above, 10 points per decade: enough
#: to see where the loss flattens without the response growing with the law's scale.
CURVE_DECADES_BELOW = 2
CURVE_DECADES_ABOVE = 1
CURVE_POINTS_PER_DECADE = 10


def curve_tokens(tokens: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Log-spaced token counts around `tokens` (which is one of them, unless it is so small that
    two decades below it underflow: the grid then starts at the smallest normal float)."""
    n = (CURVE_DECADES_BELOW + CURVE_DECADES_ABOVE) * CURVE_POINTS_PER_DECADE + 1
    bottom = max(tokens / 10.0**CURVE_DECADES_BELOW, float(np.finfo(np.float64).tiny))
    return np.geomspace(bottom, max(tokens * 10.0**CURVE_DECADES_ABOVE, bottom), n)


def far_warning(factor: float | None) -> list[str]:
    """A warning for an answer more than FAR_BEYOND times the tokens the fit observed."""
    if factor is None or factor <= FAR_BEYOND:
        return []
    return [
        f"the answer lies {factor:.3g}x beyond the most tokens the fit observed: an "
        f"extrapolation (beyond {FAR_BEYOND:g}x)"
    ]


def _the_run(request: RecommendRequest, session: Session | None) -> RunCurve | None:
    """The run whose checkpoints anchor the answer: stored (`run_id`) or inline."""
    if request.run_points is not None:
        return run_curve(
            [p.tokens for p in request.run_points],
            [p.loss for p in request.run_points],
            n0=request.n0,
            rho=request.rho,
            l0=request.l0,
            run_id="(inline)",
        )
    if request.run_id is None:
        return None
    assert session is not None
    rows = observations_repo.select_for_fit(session, run_ids=[request.run_id])
    if not rows:
        raise NotFound(f"no observations of run {request.run_id!r}")
    stored = runs_of(Dataset.from_rows(rows))[0]
    same_n0 = abs(stored.n0 - request.n0) <= 1e-6 * request.n0
    if not same_n0 or abs(stored.l0 - request.l0) > 1e-6 * request.l0:
        raise Unprocessable(
            f"run {request.run_id!r} has n0={stored.n0:.6g} and l0={stored.l0:.6g}, not the "
            "request's n0 and l0: an answer anchored on a run is about that run"
        )
    return run_curve(
        stored.tokens.tolist(),
        stored.loss.tolist(),
        n0=stored.n0,
        rho=stored.rho,
        l0=stored.l0,
        run_id=request.run_id,
    )


def _references(ref: LawRef, session: Session | None) -> list[RunCurve]:
    """The runs of the fit the law comes from (none for an inline law)."""
    if ref.fit_id is None or session is None:
        return []
    fit = fits_repo.get(session, ref.fit_id)
    if fit is None or not fit.run_ids:
        return []
    rows = observations_repo.select_for_fit(session, run_ids=list(fit.run_ids))
    return runs_of(Dataset.from_rows(rows)) if rows else []


def _anchored(
    request: RecommendRequest, ref: LawRef, run: RunCurve, session: Session | None
) -> dict[str, Any]:
    """The answer on the run's own curve (`app.law.anchored`)."""
    law: FittedLaw = ref.law
    value = request.target_loss if request.rule == "target" else request.threshold
    assert value is not None
    references = _references(ref, session)
    answer = recommend_anchored(
        run,
        references,
        rule=request.rule,
        value=float(value),
        law=law,
        max_tokens=request.max_tokens,
        level=request.interval,
    )
    tokens = finite_float(answer.tokens, "token count")
    grid = curve_tokens(tokens)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss = anchored_loss(run, references, grid, law, rule=request.rule, value=float(value))
    curve = [
        {"tokens": float(t), "loss": v, "lower": None, "upper": None}
        for t, v in zip(grid.tolist(), finite_list(loss, "loss on the curve"), strict=True)
    ]
    factor = beyond_observed(law.ranges, tokens) if law.ranges is not None else None
    warnings = [*answer.notes, *far_warning(factor)]
    if answer.capped:
        warnings.append(f"the answer is capped at max_tokens={request.max_tokens:.6g}")
    interval = answer.tokens_interval
    return {
        "tokens": tokens,
        "predicted_loss": finite_float(answer.predicted_loss, "predicted loss"),
        "floor_loss": finite_float(answer.floor_loss, "floor loss"),
        "capped": answer.capped,
        "tokens_interval": interval,
        "curve": curve,
        "warnings": warnings,
        "beyond_observed": factor,
        "anchor": {
            "run_id": request.run_id,
            "points": int(run.tokens.size),
            "last_tokens": answer.anchor_tokens,
            "exponent": answer.shape.exponent,
            "shape_from": answer.shape.source,
            "reference_runs": list(answer.shape.run_ids),
            "beyond_run": tokens / answer.anchor_tokens,
        },
    }


def recommend(request: RecommendRequest, session: Session | None = None) -> dict[str, Any]:
    """Tokens by the request's rule, the loss there, the floor, and the curve around it; on
    the run's own curve when its checkpoints are given (`run_id` or `run_points`)."""
    ref = resolve_law(request, session)
    run = _the_run(request, session)
    if run is not None:
        return _anchored(request, ref, run, session)
    law = ref.law
    # An interval needs refits: without them the answer has none (and says why).
    level = request.interval if law.refits else None
    warnings: list[str] = []
    kind = request.interval_kind
    if request.interval is not None:
        if law.refits:
            kind = interval_kind_for(law, kind, warnings)
        else:
            warnings.append(NO_REFITS)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        answer = recommend_tokens(
            law,
            n0=request.n0,
            rho=request.rho,
            l0=request.l0,
            rule=request.rule,
            threshold=request.threshold,
            target_loss=request.target_loss,
            max_tokens=request.max_tokens,
            level=level,
            kind=kind,
        )
        warnings.extend(answer.notes)
        tokens = finite_float(answer.tokens, "token count")
        grid = curve_tokens(tokens)
        loss, lower, upper = loss_curve(
            law,
            n0=request.n0,
            rho=request.rho,
            l0=request.l0,
            tokens=grid,
            level=level,
            kind=kind,
        )
    losses = finite_list(loss, "loss on the curve")
    lows = [finite_or_none(v) for v in lower] if lower is not None else [None] * len(grid)
    highs = [finite_or_none(v) for v in upper] if upper is not None else [None] * len(grid)
    curve = [
        {"tokens": float(t), "loss": lo_, "lower": a, "upper": b}
        for t, lo_, a, b in zip(grid.tolist(), losses, lows, highs, strict=True)
    ]
    interval: tuple[float, float | None] | None = None
    if answer.tokens_interval is not None:
        low, high = answer.tokens_interval
        if finite_or_none(low) is not None:
            # An interval open above (the band's upper edge never reaches the target) is
            # [low, null]: JSON has no infinity.
            interval = (float(low), finite_or_none(high))
    x = features([request.n0], [request.rho], [request.l0], [tokens])
    warnings += range_warnings(law, x, family=request.family, method=request.method)
    warnings += continuation_note(law.calibration, x)
    if answer.capped:
        warnings.append(f"the answer is capped at max_tokens={request.max_tokens:.6g}")
    warnings += far_warning(answer.beyond_observed)
    return {
        "tokens": tokens,
        "predicted_loss": finite_float(answer.predicted_loss, "predicted loss"),
        "floor_loss": finite_float(answer.floor_loss, "floor loss"),
        "capped": bool(answer.capped),
        "tokens_interval": interval,
        "curve": curve,
        "warnings": warnings,
        "beyond_observed": answer.beyond_observed,
        "anchor": None,
    }
