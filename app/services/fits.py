"""Use-cases on fits: fit a form to stored observations, read fits, plot one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.core.recipes import DEFAULT_RECIPE
from app.db.models.fit import Fit
from app.db.models.observation import Observation
from app.law.bootstrap import refit_runs
from app.law.fitting import fit as fit_law
from app.law.forms import get_form
from app.law.intervals import calibrate, calibrate_and_measure, runs_only
from app.law.select import SelectBy, select_form
from app.law.types import Dataset, FitResult, HoldOut
from app.repositories import fits as repo
from app.repositories import observations as observations_repo
from app.services.convert import finite_or_none, metrics_dict

#: `form` value that chooses the form by held-out error, and the use it chooses for by default.
AUTO_FORM = "auto"
DEFAULT_SELECT_BY: SelectBy = "runs"
#: Level at which a fit's interval coverage is measured unless the request names another.
DEFAULT_COVERAGE_LEVEL = 0.8


def _describe(
    family: str | None, method: str | None, run_ids: Sequence[str] | None, recipe: str
) -> str:
    parts = [f"family={family!r}" if family else "any family"]
    parts.append(f"method={method!r}" if method else "any method")
    parts.append(f"recipe={recipe!r}")
    if run_ids:
        shown = ", ".join(run_ids[:5]) + (" …" if len(run_ids) > 5 else "")
        parts.append(f"runs [{shown}]")
    return ", ".join(parts)


def _single_protocol(rows: Sequence[Observation]) -> str:
    """The one evaluation protocol of the selection; a mix is a 422 (docs/law.md §3)."""
    counts = Counter(row.protocol or "" for row in rows)
    if len(counts) > 1:
        listed = ", ".join(f"{p or '(none)'}: {n} points" for p, n in counts.most_common())
        raise Unprocessable(
            "the selected observations mix evaluation protocols "
            f"({listed}); losses measured differently cannot share a fit: "
            "narrow the selection with run_ids (or family/method) to one protocol"
        )
    return next(iter(counts))


def _only(values: Sequence[str]) -> str | None:
    unique = set(values)
    return next(iter(unique)) if len(unique) == 1 else None


def create_fit(
    session: Session,
    *,
    form: str = "p2",
    family: str | None = None,
    method: str | None = None,
    run_ids: Sequence[str] | None = None,
    recipe: str = DEFAULT_RECIPE,
    bootstrap: int = 0,
    holdout: HoldOut | None = None,
    make_default: bool = False,
    include_excluded: bool = False,
    seed: int = 0,
    interval: float = DEFAULT_COVERAGE_LEVEL,
    coverage: bool = True,
    select_by: SelectBy | None = None,
) -> Fit:
    """Fit `form` to the selected observations, store the fit and commit.

    `form` ``"auto"`` first chooses the form by held-out error for the use `select_by`
    (``runs`` by default; docs/law.md §4) and keeps the comparison in ``fits.selection``.

    The selection is the observations of `recipe` (``full`` by default: a fit never mixes
    recipes) and of `family`, `method` and `run_ids` (each optional); it must hold one
    evaluation protocol. `bootstrap` refits on runs resampled with replacement
    are stored for intervals, with the calibration of its prediction intervals and their
    coverage measured at level `interval` on every protocol the data allow. The fit becomes
    the default of its (family, method, recipe) when asked,
    or when that pair has no default yet. Raises Unprocessable when nothing or too little is
    selected (LawError from the law for too few points per parameter).
    """
    fit = compute_fit(
        session,
        form=form,
        family=family,
        method=method,
        run_ids=run_ids,
        recipe=recipe,
        bootstrap=bootstrap,
        holdout=holdout,
        include_excluded=include_excluded,
        seed=seed,
        interval=interval,
        coverage=coverage,
        select_by=select_by,
    )
    store_fit(session, fit, make_default=make_default)
    session.commit()
    return fit


def compute_fit(
    session: Session,
    *,
    form: str,
    family: str | None,
    method: str | None,
    run_ids: Sequence[str] | None = None,
    recipe: str = DEFAULT_RECIPE,
    bootstrap: int = 0,
    holdout: HoldOut | None = None,
    include_excluded: bool = False,
    seed: int = 0,
    interval: float = DEFAULT_COVERAGE_LEVEL,
    coverage: bool = True,
    select_by: SelectBy | None = None,
) -> Fit:
    """The fit of `form` to the selected observations as an unsaved row (see `create_fit`).

    Reads, then ends the session's transaction before fitting, so that no lock is held for the
    seconds a fit with a bootstrap takes; `store_fit` writes it in a transaction of its own.
    """
    auto = form == AUTO_FORM
    if select_by is not None and not auto:
        raise Unprocessable(f"select_by needs form {AUTO_FORM!r} (form is {form!r})")
    if not auto:
        get_form(form)  # an unknown form is refused before anything is read
    rows = observations_repo.select_for_fit(
        session,
        family=family,
        method=method,
        run_ids=run_ids,
        include_excluded=include_excluded,
        recipe=recipe,
    )
    if not rows:
        raise Unprocessable(
            f"no observations match ({_describe(family, method, run_ids, recipe)}"
            f"{'' if include_excluded else ', excluded points left out'}): "
            "upload some with POST /observations first"
        )
    protocol = _single_protocol(rows)
    data = Dataset.from_rows(rows)
    # End the read before fitting: on SQLite every transaction holds the write lock
    # (BEGIN IMMEDIATE), and a fit with a bootstrap takes seconds.
    session.rollback()
    selection = select_form(data, select_by or DEFAULT_SELECT_BY) if auto else None
    name = selection.chosen if selection is not None else get_form(form).name
    result = fit_law(name, data, holdout=holdout)
    refits = refit_runs(name, data, result, bootstrap, seed=seed) if bootstrap > 0 else []
    calibration = (
        calibration_of(name, data, result, level=interval, seed=seed, coverage=coverage)
        if refits
        else runs_only(name, data, result).as_dict()
    )

    fit = Fit(
        form=name,
        family=family if family is not None else _only(data.family),
        method=method if method is not None else _only(data.method),
        protocol=protocol or None,
        recipe=recipe,
        run_ids=list(data.run_ids),
        params={k: float(v) for k, v in result.params.items()},
        objective=float(result.objective),
        converged=bool(result.converged),
        message=result.message,
        n_starts=int(result.n_starts),
        n_observations=int(result.n_observations),
        n_runs=int(result.n_runs),
        metrics=metrics_dict(result.metrics) or {},
        holdout_protocol=holdout,
        holdout_metrics=metrics_dict(result.holdout_metrics),
        ranges=result.ranges.as_dict(),
        bootstrap=[
            {k: float(v) for k, v in params.items()}
            for params in refits
            if all(finite_or_none(v) is not None for v in params.values())
        ],
        calibration=calibration,
        selection=selection.as_dict() if selection is not None else None,
        is_default=False,
    )
    return fit


def calibration_of(
    form: str,
    data: Dataset,
    result: FitResult,
    *,
    level: float,
    seed: int = 0,
    coverage: bool = True,
) -> dict[str, Any]:
    """The residual pools of a fit's prediction intervals and (with `coverage`) their coverage
    at `level` on each protocol its data allow (docs/law.md §4), as stored in
    ``fits.calibration``."""
    if not coverage:
        return calibrate(form, data, result).as_dict()
    return calibrate_and_measure(form, data, result, level=level, seed=seed).as_dict()


def store_fit(session: Session, fit: Fit, *, make_default: bool) -> None:
    """Add `fit`; it becomes its (family, method, recipe)'s default when asked or when there is
    none. Flushes, never commits: the caller owns the transaction."""
    repo.add(session, fit)
    if make_default or (
        fit.family is not None
        and fit.method is not None
        and repo.get_default(session, fit.family, fit.method, fit.recipe) is None
    ):
        repo.set_default(session, fit)


def get_fit(session: Session, fit_id: str) -> Fit:
    """The stored fit `fit_id`; NotFound (404) when there is none."""
    fit = repo.get(session, fit_id)
    if fit is None:
        raise NotFound(f"no fit with id {fit_id!r}")
    return fit


def list_fits(
    session: Session,
    *,
    family: str | None,
    method: str | None,
    offset: int,
    limit: int,
    recipe: str | None = None,
) -> tuple[list[Fit], int]:
    """One page of fits (newest first) and the total matching the filters."""
    return repo.list_page(
        session, family=family, method=method, recipe=recipe, offset=offset, limit=limit
    )


def plot_fit_png(session: Session, fit_id: str) -> bytes:
    """A PNG of the fit's observations and its fitted curve per run."""
    from app.plotting import plot_fit

    fit = get_fit(session, fit_id)
    rows = [
        row
        for row in observations_repo.select_for_fit(
            session, run_ids=list(fit.run_ids), include_excluded=True, recipe=fit.recipe
        )
        if (row.protocol or None) == fit.protocol
    ]
    if not rows:
        raise Unprocessable(f"the observations of fit {fit_id!r} are no longer stored")
    scope = f"{fit.family or 'any family'}, {fit.method or 'any method'}, {fit.recipe}"
    title = f"{fit.form} fit {fit.id[:8]} — {scope}"
    png: bytes = plot_fit(fit.form, fit.params, Dataset.from_rows(rows), title=title)
    return png
