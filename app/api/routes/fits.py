"""`POST /fits`, `GET /fits`, `GET /fits/{id}`, `GET /fits/{id}/plot.png`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import Response

from app.api.deps import SessionDep, require_api_key
from app.core.recipes import RecipeName
from app.schemas.common import ERRORS, NO_NUL, NOT_FOUND, UNAUTHORIZED, unprocessable
from app.schemas.fits import FitCreate, FitOut, FitPage
from app.services import fits as service
from app.services.convert import fit_out

router = APIRouter(tags=["fits"], responses=ERRORS)

FitId = Annotated[str, Path(max_length=64, pattern=NO_NUL, description="A fit's id.")]

_EXAMPLES: dict[str, Any] = {
    "default fit with bootstrap": {
        "summary": "P² on one family and method, 50 bootstrap refits, D hold-out",
        "value": {
            "form": "p2",
            "family": "llama-3",
            "method": "depth",
            "bootstrap": 50,
            "holdout": {"protocol": "D"},
            "make_default": True,
        },
    },
    "form chosen by held-out error": {
        "summary": "Every form compared on the largest size held out; the best one is kept",
        "value": {"form": "auto", "select_by": "N0", "family": "llama-3", "method": "2:4"},
    },
    "chosen runs": {
        "summary": "Only some runs, the curve baseline",
        "value": {"form": "curve", "run_ids": ["llama-1b-depth-0.25"]},
    },
}


#: What POST /fits refuses beyond its request schema (docs/api.md, POST /fits): all of it
#: depends on the stored observations.
FIT_422 = unprocessable(
    "data: no observation matches the selection (of one `recipe`); the selection mixes "
    "evaluation protocols (the message lists them); fewer observations than the form has "
    "parameters; a hold-out protocol that leaves one side empty; with `auto`, a `select_by` "
    "that cannot form a fold, or no form scored on every fold.",
)


@router.post(
    "/fits",
    status_code=201,
    response_model=FitOut,
    dependencies=[Depends(require_api_key)],
    responses={**UNAUTHORIZED, **FIT_422},
)
def create_fit(
    session: SessionDep, body: FitCreate = Body(..., openapi_examples=_EXAMPLES)
) -> dict[str, Any]:
    """Fit a law to stored observations (one evaluation protocol; a mix is a 422).

    With `"form": "auto"`, every registered form is fitted on the folds of `select_by` and the
    one with the lowest held-out MAPE is kept; `selection` holds the comparison."""
    fit = service.create_fit(
        session,
        form=body.form,
        family=body.family,
        method=body.method,
        run_ids=body.run_ids,
        recipe=body.recipe,
        bootstrap=body.bootstrap,
        holdout=body.holdout.protocol if body.holdout is not None else None,
        interval=body.interval,
        coverage=body.measure_coverage,
        make_default=body.make_default,
        include_excluded=body.include_excluded,
        seed=body.seed,
        select_by=body.select_by,
    )
    return fit_out(fit)


@router.get("/fits", response_model=FitPage)
def list_fits(
    session: SessionDep,
    *,
    family: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    method: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    recipe: RecipeName | None = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """List fits, newest first, filtered and paged."""
    fits, total = service.list_fits(
        session, family=family, method=method, recipe=recipe, offset=offset, limit=limit
    )
    return {"items": [fit_out(f) for f in fits], "total": total, "offset": offset, "limit": limit}


@router.get("/fits/{fit_id}", response_model=FitOut, responses=NOT_FOUND)
def read_fit(session: SessionDep, fit_id: FitId) -> dict[str, Any]:
    """Read one fit."""
    return fit_out(service.get_fit(session, fit_id))


@router.get(
    "/fits/{fit_id}/plot.png",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"image/png": {}}, "description": "Observed points and fitted curves."},
    },
)
def plot_fit(session: SessionDep, fit_id: FitId) -> Response:
    """Plot a fit: observed points and the fitted curve of every run."""
    return Response(content=service.plot_fit_png(session, fit_id), media_type="image/png")
