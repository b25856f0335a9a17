"""What the stored observations cover: the families and methods a law can answer for, with the
ranges inside which its answers are interpolation (`GET /families`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import groupby
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.recipes import RECIPES
from app.repositories import fits as fits_repo
from app.repositories import observations as observations_repo

_SPANNED = ("n0", "rho", "l0", "tokens")


_RECIPE_ORDER = {name: i for i, name in enumerate(RECIPES)}


def _recipes_in_order(names: Iterable[str]) -> list[str]:
    """Recipes in the order app.core.recipes declares them (full first), unknown ones last."""
    return sorted(set(names), key=lambda name: (_RECIPE_ORDER.get(name, 99), name))


def _span_of(rows: Iterable[Mapping[str, Any]], name: str) -> list[float]:
    rows = list(rows)
    return [
        float(min(row[f"{name}_lo"] for row in rows)),
        float(max(row[f"{name}_hi"] for row in rows)),
    ]


def list_families(session: Session, family: str | None = None) -> list[dict[str, Any]]:
    """Every family with kept observations (or `family` only), each with its recipes, its
    methods (one entry per (method, recipe)), spans and default fits.

    Run counts of a family add its methods' runs (a run has one method and one recipe)."""
    defaults = fits_repo.defaults(session)
    out: list[dict[str, Any]] = []
    summaries = observations_repo.family_method_summaries(session, family)
    for family_name, grouped in groupby(summaries, key=lambda row: row["family"]):
        rows = list(grouped)
        methods = []
        for row in rows:
            key = (family_name, row["method"], row["recipe"])
            fit_id, form = defaults.get(key, (None, None))
            methods.append(
                {
                    "method": row["method"],
                    "recipe": row["recipe"],
                    "n_runs": int(row["n_runs"]),
                    "n_observations": int(row["n_observations"]),
                    **{name: _span_of([row], name) for name in _SPANNED},
                    "default_fit_id": fit_id,
                    "default_form": form,
                }
            )
        methods.sort(key=lambda m: (m["method"], _RECIPE_ORDER.get(m["recipe"], 99), m["recipe"]))
        out.append(
            {
                "family": family_name,
                "reference": all(row["n_reference"] == row["n_observations"] for row in rows),
                "protocols": sorted({p for row in rows for p in row["protocols"]}),
                "recipes": _recipes_in_order({row["recipe"] for row in rows}),
                "n_runs": sum(int(row["n_runs"]) for row in rows),
                "n_observations": sum(int(row["n_observations"]) for row in rows),
                **{name: _span_of(rows, name) for name in _SPANNED},
                "methods": methods,
            }
        )
    return out


def get_family(session: Session, family: str) -> dict[str, Any]:
    """One family of `list_families`; NotFound (404) when it has no kept observations."""
    for summary in list_families(session, family):
        return summary
    raise NotFound(f"no observations of family {family!r}: GET /families lists those there are")
