"""Use-case behind `POST /plan`: joint choice of method, ρ and tokens (docs/law.md §7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Unprocessable
from app.core.flops import recipe_flops_per_token_of_params
from app.core.recipes import DEFAULT_RECIPE, RECIPES
from app.law.law import FittedLaw
from app.law.plan import PlanCandidate, PlanOption
from app.law.plan import plan as plan_options
from app.law.ranges import FAR_BEYOND
from app.repositories import fits as fits_repo
from app.schemas.plan import PlanRequest
from app.services.convert import features, finite_or_none
from app.services.lawref import LawRef, stored_law
from app.services.predict import UNCALIBRATED, interval_kind_for, range_warnings

_RECIPE_ORDER = {name: i for i, name in enumerate(RECIPES)}
#: Methods whose post-training trains the dense shape (their masked weights densely).
_DENSE_TRAINED = ("2:4", "unstructured")

Key = tuple[str, str]
"""A candidate: (method, recipe)."""


def _default_laws(session: Session, family: str) -> dict[Key, LawRef]:
    """The default fit of every (method, recipe) of `family` (ids read now, content from the
    fit cache)."""
    laws: dict[Key, LawRef] = {}
    for method, recipe, fit_id in fits_repo.default_ids(session, family):
        if (method, recipe) not in laws:
            laws[(method, recipe)] = stored_law(fit_id, session)
    return laws


def option_flops(method: str, recipe: str, *, n0: float, rho: float, tokens: float) -> float:
    """Training FLOPs of an option: tokens × the recipe's FLOPs per token from parameter counts
    (`app.core.flops.recipe_flops_per_token_of_params`); depth and width train n0·(1 − ρ)
    parameters, 2:4 and unstructured the dense n0 (their masked weights train densely, and
    LoRA forms their masked update whole)."""
    masked = method in _DENSE_TRAINED
    trained = n0 if masked else n0 * (1.0 - rho)
    return tokens * recipe_flops_per_token_of_params(recipe, trained, n0, masked=masked)


def _option(option: PlanOption, fit_id: str | None, n0: float) -> dict[str, Any] | None:
    loss = finite_or_none(option.predicted_loss)
    if loss is None:
        return None
    flops = option_flops(
        option.method, option.recipe, n0=n0, rho=float(option.rho), tokens=float(option.tokens)
    )
    return {
        "method": option.method,
        "recipe": option.recipe,
        "fit_id": fit_id,
        "rho": float(option.rho),
        "tokens": float(option.tokens),
        "predicted_loss": loss,
        "lower": finite_or_none(option.lower),
        "upper": finite_or_none(option.upper),
        "n_after": float(option.n_after),
        "flops": flops,
        "beyond_observed": finite_or_none(option.beyond_observed),
    }


def label(method: str, recipe: str) -> str:
    """How warnings name a candidate: the method, with its recipe when it is not full."""
    return method if recipe == DEFAULT_RECIPE else f"{method} ({recipe})"


def _factor(value: float) -> str:
    """A factor as people read it: 950×, 1.2e+05×."""
    return f"{value:,.0f}×" if value < 1e5 else f"{value:.2g}×"


def far_beyond_warnings(options: list[dict[str, Any]], laws: dict[Key, FittedLaw]) -> list[str]:
    """One warning per (method, recipe) whose options lie more than FAR_BEYOND times past the
    most tokens its fit observed (those answers are extrapolations), and one for the best."""
    out: list[str] = []
    for (method, recipe), law in laws.items():
        mine = [o for o in options if (o["method"], o["recipe"]) == (method, recipe)]
        far = [o for o in mine if (o["beyond_observed"] or 0.0) > FAR_BEYOND]
        if not far or law.ranges is None:
            continue
        most = max(o["beyond_observed"] for o in far)
        out.append(
            f"{label(method, recipe)}: {len(far)} of {len(mine)} options lie more than "
            f"{FAR_BEYOND:g}× beyond "
            f"the {law.ranges.tokens[1]:,.0f} tokens its fit observed (up to "
            f"{_factor(most)}): those token counts are extrapolations"
        )
    best = options[0] if options else None
    if best is not None and (best["beyond_observed"] or 0.0) > FAR_BEYOND:
        observed = best["tokens"] / best["beyond_observed"]
        out.append(
            f"best: {best['tokens']:,.0f} tokens is {_factor(best['beyond_observed'])} the "
            f"{observed:,.0f} tokens the {label(best['method'], best['recipe'])} fit observed: "
            "an extrapolation, "
            "not a measured answer"
        )
    return out


def _requested(
    asked: Sequence[str] | None, have: set[str], what: str, family: str, warnings: list[str]
) -> list[str]:
    """The requested names that have a default fit (all of `have` when none are asked), with a
    warning naming those left out."""
    if asked is None:
        return sorted(have)
    wanted = list(dict.fromkeys(asked))
    missing = [name for name in wanted if name not in have]
    if missing:
        warnings.append(
            f"left out (no default fit for family {family!r}): {what} {', '.join(missing)}"
        )
    return [name for name in wanted if name in have]


def plan(session: Session, request: PlanRequest) -> dict[str, Any]:
    """Ranked (method, recipe, ρ, tokens) options from the family's default fits, the best
    one, and each option's training FLOPs."""
    available = _default_laws(session, request.family)
    warnings: list[str] = []
    methods = _requested(
        request.methods, {m for m, _ in available}, "method", request.family, warnings
    )
    recipes = _requested(
        request.recipes, {r for _, r in available}, "recipe", request.family, warnings
    )
    recipes = sorted(recipes, key=lambda r: (_RECIPE_ORDER.get(r, 99), r))
    chosen = [(m, r) for m in methods for r in recipes if (m, r) in available]
    if not chosen:
        have = ", ".join(label(m, r) for m, r in sorted(available)) or "none"
        raise Unprocessable(
            f"no method to plan with: family {request.family!r} has default fits for: {have}; "
            "create fits with POST /fits (make_default=true)"
        )
    laws = {key: available[key].law for key in chosen}
    kinds = {key: interval_kind_for(laws[key], request.interval_kind, []) for key in chosen}
    candidates = [
        PlanCandidate(method=m, law=laws[(m, r)], kind=kinds[(m, r)], recipe=r) for m, r in chosen
    ]
    if request.interval is not None:
        bare = [label(*key) for key in chosen if not laws[key].refits]
        if bare:
            warnings.append(f"no interval for {', '.join(bare)}: those fits have no bootstrap")
        uncalibrated = [
            label(*key)
            for key in chosen
            if laws[key].refits and kinds[key] != request.interval_kind
        ]
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
    fit_ids = {key: available[key].fit_id for key in chosen}
    options = [
        o
        for o in (
            _option(opt, fit_ids.get((opt.method, opt.recipe)), request.n0)
            for opt in result.options
        )
        if o
    ]
    dropped = len(result.options) - len(options)
    if dropped:
        warnings.append(f"{dropped} options left out: the law's prediction there is not finite")
    warnings += far_beyond_warnings(options, laws)
    best = options[0] if options else None
    if best is not None:
        x = features([request.n0], [best["rho"]], [request.l0], [best["tokens"]])
        key = (best["method"], best["recipe"])
        for w in range_warnings(laws[key], x, family=request.family):
            warnings.append(f"{label(*key)}: {w}")
    return {
        "options": options,
        "best": best,
        "methods": [m for m in methods if any(key[0] == m for key in chosen)],
        "recipes": [r for r in recipes if any(key[1] == r for key in chosen)],
        "warnings": warnings,
    }
