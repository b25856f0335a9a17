"""Use-case behind `POST /plan`: joint choice of method, ρ and tokens (docs/law.md §7)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Unprocessable
from app.law.law import FittedLaw
from app.law.plan import PlanCandidate, PlanOption
from app.law.plan import plan as plan_options
from app.law.ranges import FAR_BEYOND
from app.repositories import fits as fits_repo
from app.schemas.plan import PlanRequest
from app.services.convert import features, finite_or_none
from app.services.lawref import LawRef, stored_law
from app.services.predict import UNCALIBRATED, interval_kind_for, range_warnings


def _default_laws(session: Session, family: str) -> dict[str, LawRef]:
    """The default fit of every method of `family`, by method (ids read now, content from the
    fit cache)."""
    laws: dict[str, LawRef] = {}
    for method, fit_id in fits_repo.default_ids(session, family):
        if method not in laws:
            laws[method] = stored_law(fit_id, session)
    return laws


def _option(option: PlanOption, fit_id: str | None) -> dict[str, Any] | None:
    loss = finite_or_none(option.predicted_loss)
    if loss is None:
        return None
    return {
        "method": option.method,
        "fit_id": fit_id,
        "rho": float(option.rho),
        "tokens": float(option.tokens),
        "predicted_loss": loss,
        "lower": finite_or_none(option.lower),
        "upper": finite_or_none(option.upper),
        "n_after": float(option.n_after),
        "beyond_observed": finite_or_none(option.beyond_observed),
    }


def _factor(value: float) -> str:
    """A factor as people read it: 950×, 1.2e+05×."""
    return f"{value:,.0f}×" if value < 1e5 else f"{value:.2g}×"


def far_beyond_warnings(options: list[dict[str, Any]], laws: dict[str, FittedLaw]) -> list[str]:
    """One warning per method whose options lie more than FAR_BEYOND times past the most
    tokens its fit observed (those answers are extrapolations), and one for the best."""
    out: list[str] = []
    for method, law in laws.items():
        mine = [o for o in options if o["method"] == method]
        far = [o for o in mine if (o["beyond_observed"] or 0.0) > FAR_BEYOND]
        if not far or law.ranges is None:
            continue
        most = max(o["beyond_observed"] for o in far)
        out.append(
            f"{method}: {len(far)} of {len(mine)} options lie more than {FAR_BEYOND:g}× beyond "
            f"the {law.ranges.tokens[1]:,.0f} tokens its fit observed (up to "
            f"{_factor(most)}): those token counts are extrapolations"
        )
    best = options[0] if options else None
    if best is not None and (best["beyond_observed"] or 0.0) > FAR_BEYOND:
        observed = best["tokens"] / best["beyond_observed"]
        out.append(
            f"best: {best['tokens']:,.0f} tokens is {_factor(best['beyond_observed'])} the "
            f"{observed:,.0f} tokens the {best['method']} fit observed: an extrapolation, "
            "not a measured answer"
        )
    return out


def plan(session: Session, request: PlanRequest) -> dict[str, Any]:
    """Ranked (method, ρ, tokens) options from the family's default fits, and the best one."""
    available = _default_laws(session, request.family)
    warnings: list[str] = []
    if request.methods is None:
        chosen = sorted(available)
    else:
        chosen = [m for m in dict.fromkeys(request.methods) if m in available]
        missing = [m for m in dict.fromkeys(request.methods) if m not in available]
        if missing:
            warnings.append(
                f"left out (no default fit for family {request.family!r}): {', '.join(missing)}"
            )
    if not chosen:
        have = ", ".join(sorted(available)) or "none"
        raise Unprocessable(
            f"no method to plan with: family {request.family!r} has default fits for: {have}; "
            "create fits with POST /fits (make_default=true)"
        )
    laws = {m: available[m].law for m in chosen}
    kinds = {m: interval_kind_for(laws[m], request.interval_kind, []) for m in chosen}
    candidates = [PlanCandidate(method=m, law=laws[m], kind=kinds[m]) for m in chosen]
    if request.interval is not None:
        bare = [m for m in chosen if not laws[m].refits]
        if bare:
            warnings.append(f"no interval for {', '.join(bare)}: those fits have no bootstrap")
        uncalibrated = [m for m in chosen if laws[m].refits and kinds[m] != request.interval_kind]
        if uncalibrated:
            warnings.append(f"{', '.join(uncalibrated)}: {UNCALIBRATED}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = plan_options(
            candidates,
            n0=request.n0,
            l0=request.l0,
            rho_min=request.rho_min,
            token_budget=request.token_budget,
            rho_grid=request.rho_grid,
            token_grid=request.token_grid,
            level=request.interval,
            max_options=request.max_options,
        )
    fit_ids = {m: available[m].fit_id for m in chosen}
    options = [o for o in (_option(opt, fit_ids.get(opt.method)) for opt in result.options) if o]
    dropped = len(result.options) - len(options)
    if dropped:
        warnings.append(f"{dropped} options left out: the law's prediction there is not finite")
    warnings += far_beyond_warnings(options, {m: laws[m] for m in chosen})
    best = options[0] if options else None
    if best is not None:
        x = features([request.n0], [best["rho"]], [request.l0], [best["tokens"]])
        for w in range_warnings(laws[best["method"]], x, family=request.family):
            warnings.append(f"{best['method']}: {w}")
    return {"options": options, "best": best, "methods": chosen, "warnings": warnings}
