"""Reference laws out of the box: load the shipped observations and default fits into a
database, and rebuild the shipped fits from the shipped observations (docs/law.md §8).

Loading never overwrites: an observation whose (run_id, tokens) is already stored keeps the
stored row, a shipped fit already stored (same id) is skipped, and a shipped fit becomes the
default of its (family, method) only where that pair has no default yet. The shipped fits carry
deterministic ids, so loading twice stores nothing the second time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.recipes import DEFAULT_RECIPE
from app.db.models.fit import Fit
from app.law.errors import NotEnoughData
from app.reference import FITS_JSON, OBSERVATIONS_CSV
from app.repositories import fits as fits_repo
from app.repositories import observations as observations_repo
from app.repositories.observations import REFERENCE_SOURCE
from app.services.fits import AUTO_FORM, compute_fit, store_fit

#: How the shipped default fits are made: the form with the lowest held-out error on whole
#: runs, 50 bootstrap refits (prediction intervals calibrated, coverage measured at 80%).
REFERENCE_FORM = AUTO_FORM
REFERENCE_BOOTSTRAP = 50
REFERENCE_SEED = 0
#: The study results the shipped observations are gathered from (relative to the repository),
#: in order: a run in a later file replaces the rows of the same run id in earlier ones (the
#: longer SmolLM2 pass continues runs of the wide pass's setup under their ids); a file not
#: there yet is skipped.
STUDY_CSVS = (
    "studies/results/observations.csv",
    "studies/results/wide/observations.csv",
    "studies/results/wide/smollm2/observations.csv",
    "studies/results/smollm2-long/observations.csv",
    "studies/results/recipes/observations.csv",
)
_FLOATS = ("n0", "rho", "l0", "tokens", "loss")
_COLUMNS = ("run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss", "protocol")
#: Fit columns a shipped fit carries (the rest are set when it is stored).
_FIT_FIELDS = (
    "id",
    "form",
    "family",
    "method",
    "protocol",
    "run_ids",
    "params",
    "objective",
    "converged",
    "message",
    "n_starts",
    "n_observations",
    "n_runs",
    "metrics",
    "holdout_protocol",
    "holdout_metrics",
    "ranges",
    "bootstrap",
    "selection",
    "calibration",
)
#: The optional column (observations) and key (fits) naming a recovery recipe; absent: full.
RECIPE_COLUMN = "recipe"
_ID_NAMESPACE = uuid.UUID("5f6a1d0e-7c1b-4f7e-9a53-2b8f0c6e4d21")


@dataclass
class LoadReport:
    """What one load stored and what it left alone."""

    observations: int = 0
    observations_kept: int = 0
    fits: int = 0
    fits_present: int = 0
    defaults: list[str] = field(default_factory=list)
    skipped: str | None = None

    def summary(self) -> str:
        """One line for a terminal."""
        if self.skipped is not None:
            return f"reference laws not loaded: {self.skipped}"
        return (
            f"reference laws: {self.observations} observations stored "
            f"({self.observations_kept} already there), {self.fits} fits stored "
            f"({self.fits_present} already there), defaults set for "
            f"{', '.join(self.defaults) if self.defaults else 'no pair'}"
        )


def read_observations(path: Path = OBSERVATIONS_CSV) -> list[dict[str, Any]]:
    """The shipped observations as rows for the observations table (source ``reference``).

    A ``recipe`` column is read when the file has one (an empty cell is ``full``); without it
    every row is a full post-training."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {
                **{name: row[name] for name in _COLUMNS},
                **{name: float(row[name]) for name in _FLOATS},
                "source": REFERENCE_SOURCE,
                "recipe": (row.get(RECIPE_COLUMN) or "").strip() or DEFAULT_RECIPE,
            }
            for row in csv.DictReader(handle)
        ]


def read_fits(path: Path = FITS_JSON) -> list[dict[str, Any]]:
    """The shipped fits, one dict of Fit columns each."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return list(document["fits"])


def database_is_empty(session: Session) -> bool:
    """No observation and no fit stored: the state a first start finds."""
    return observations_repo.count_all(session) == 0 and fits_repo.count_all(session) == 0


def load_reference(session: Session, *, only_if_empty: bool = True) -> LoadReport:
    """Store the shipped observations and fits (see the module docstring) and commit.

    With `only_if_empty` (what a start does), a database holding any observation or fit is left
    as it is."""
    if only_if_empty and not database_is_empty(session):
        session.rollback()
        return LoadReport(skipped="the database already holds observations or fits")
    rows = read_observations()
    shipped = read_fits()
    report = LoadReport()
    report.observations = observations_repo.insert_ignore(session, rows)
    report.observations_kept = len(rows) - report.observations
    for values in shipped:
        if fits_repo.get(session, str(values["id"])) is not None:
            report.fits_present += 1
            continue
        fit = Fit(
            **{name: values[name] for name in _FIT_FIELDS},
            recipe=values.get(RECIPE_COLUMN, DEFAULT_RECIPE),
            is_default=False,
        )
        store_fit(session, fit, make_default=False)
        report.fits += 1
        if fit.is_default:
            recipe = "" if fit.recipe == DEFAULT_RECIPE else f" ({fit.recipe})"
            report.defaults.append(f"{fit.family}/{fit.method}{recipe}")
    session.commit()
    return report


def gather_study_observations(root: Path) -> list[dict[str, str]]:
    """The study's observations (STUDY_CSVS under `root`), in file then row order, each with its
    recipe (full where a file has no recipe column); a run id in a later file replaces the
    earlier files' rows of that run."""
    by_run: dict[str, list[dict[str, str]]] = {}
    for name in STUDY_CSVS:
        path = root / name
        if not path.is_file():
            continue
        in_file: dict[str, list[dict[str, str]]] = {}
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                kept = {column: row[column] for column in _COLUMNS}
                kept[RECIPE_COLUMN] = (row.get(RECIPE_COLUMN) or "").strip() or DEFAULT_RECIPE
                in_file.setdefault(row["run_id"], []).append(kept)
        for run_id in in_file:
            by_run.pop(run_id, None)  # re-inserted last, in this file's order
        by_run.update(in_file)
    return [row for rows in by_run.values() for row in rows]


def write_observations(rows: Iterable[Mapping[str, str]], path: Path = OBSERVATIONS_CSV) -> None:
    """Write the shipped observations file (with its recipe column)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*_COLUMNS, RECIPE_COLUMN], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def fit_id_of(
    family: str, method: str, run_ids: Sequence[str], form: str, recipe: str = DEFAULT_RECIPE
) -> str:
    """A deterministic fit id: the same shipped data and way of fitting give the same id (a full
    post-training's id is what it was before recipes existed)."""
    parts = [family, method, form, *run_ids] + ([] if recipe == DEFAULT_RECIPE else [recipe])
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return uuid.uuid5(_ID_NAMESPACE, digest).hex


def build_fits(
    rows: Sequence[Mapping[str, Any]],
    *,
    pairs: Iterable[tuple[str, str]] | None = None,
    bootstrap: int = REFERENCE_BOOTSTRAP,
    skipped: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The default fit of every (family, method, recipe) of `rows` (of the (family, method)
    `pairs` only, when given), made exactly as `POST /fits` makes one, on a scratch SQLite
    database; a shipped fit of another recipe than full carries its ``recipe``. A triple whose
    data cannot make that fit (one run: `auto` selects on whole runs) ships its observations
    without a fit; `skipped` gets one line per such triple, with the reason."""
    from app.db.migrate import upgrade
    from app.db.session import create_engine_for, make_sessionmaker

    present = {(r["family"], r["method"], r.get("recipe") or DEFAULT_RECIPE) for r in rows}
    chosen = set(pairs) if pairs is not None else {(f, m) for f, m, _ in present}
    wanted = sorted((f, m, r) for f, m, r in present if (f, m) in chosen)
    with tempfile.TemporaryDirectory(prefix="p2law-reference-") as folder:
        url = f"sqlite:///{Path(folder) / 'reference.sqlite3'}"
        upgrade(url)
        engine = create_engine_for(url)
        try:
            with make_sessionmaker(engine)() as session:
                observations_repo.insert_ignore(session, list(rows))
                session.commit()
                built = []
                for family, method, recipe in wanted:
                    try:
                        fit = compute_fit(
                            session,
                            form=REFERENCE_FORM,
                            family=family,
                            method=method,
                            recipe=recipe,
                            bootstrap=bootstrap,
                            seed=REFERENCE_SEED,
                        )
                    except NotEnoughData as exc:
                        if skipped is not None:
                            skipped.append(f"{family}/{method} ({recipe}): {exc}")
                        continue
                    fit.id = fit_id_of(family, method, fit.run_ids, REFERENCE_FORM, recipe)
                    values = {name: getattr(fit, name) for name in _FIT_FIELDS}
                    if recipe != DEFAULT_RECIPE:
                        values[RECIPE_COLUMN] = recipe
                    built.append(values)
        finally:
            engine.dispose()
    return built


def write_fits(fits: Sequence[Mapping[str, Any]], path: Path = FITS_JSON) -> None:
    """Write the shipped fits file (stable key order, so a rebuild diffs cleanly)."""
    document = {
        "recipe": {
            "form": REFERENCE_FORM,
            "bootstrap": REFERENCE_BOOTSTRAP,
            "seed": REFERENCE_SEED,
        },
        "fits": list(fits),
    }
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
