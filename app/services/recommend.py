"""Use-case behind `POST /recommend` (docs/law.md §7)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.law.intervals import continuation_note
from app.law.recommend import loss_curve
from app.law.recommend import recommend as recommend_tokens
from app.schemas.recommend import RecommendRequest
from app.services.convert import features, finite_float, finite_list, finite_or_none
from app.services.lawref import resolve_law
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


def recommend(request: RecommendRequest, session: Session | None = None) -> dict[str, Any]:
    """Tokens by the request's rule, the loss there, the floor, and the curve around it."""
    law = resolve_law(request, session).law
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
    return {
        "tokens": tokens,
        "predicted_loss": finite_float(answer.predicted_loss, "predicted loss"),
        "floor_loss": finite_float(answer.floor_loss, "floor loss"),
        "capped": bool(answer.capped),
        "tokens_interval": interval,
        "curve": curve,
        "warnings": warnings,
    }
