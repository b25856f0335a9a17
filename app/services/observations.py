"""Use-cases on observed losses: upload (JSON rows or CSV text) and paged listing."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.core.errors import PayloadTooLarge, Unprocessable
from app.db.models.observation import Observation
from app.repositories import observations as repo
from app.schemas.observations import CSV_COLUMNS, CSV_OPTIONAL, ObservationIn


def add_observations(session: Session, rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Store observations; a (run_id, tokens) already stored or repeated is a duplicate.

    Returns (inserted, duplicates) and commits.
    """
    if not rows:
        return 0, 0
    inserted = repo.insert_ignore(session, rows)
    session.commit()
    return inserted, len(rows) - inserted


def parse_csv(text: str, *, max_rows: int) -> list[dict[str, Any]]:
    """Rows of a CSV upload, validated like the JSON form; a bad row is a 422 with its line.

    The header is required and names the columns (any order); `protocol`, `source` and `recipe`
    may be left out or empty (`recipe` then is ``full``). Non-finite numbers (nan, inf, 1e400)
    are refused.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise Unprocessable("the CSV is empty: send a header line and one row per observation")
    reader.fieldnames = header
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise Unprocessable(
            f"the CSV header lacks {', '.join(missing)}; expected columns: "
            f"{', '.join(CSV_COLUMNS + CSV_OPTIONAL)}"
        )
    unknown = [c for c in header if c not in CSV_COLUMNS + CSV_OPTIONAL]
    if unknown:
        raise Unprocessable(f"the CSV header has unknown columns: {', '.join(unknown)}")
    rows: list[dict[str, Any]] = []
    for record in reader:
        line = reader.line_num
        if None in record:
            raise Unprocessable(f"CSV line {line}: more fields than the header has")
        if all((v or "").strip() == "" for v in record.values()):
            continue
        if len(rows) >= max_rows:
            raise PayloadTooLarge(f"the CSV has more than {max_rows} rows (the upload limit)")
        values: dict[str, Any] = {}
        for name, raw in record.items():
            text_value = (raw or "").strip()
            if name in CSV_OPTIONAL and text_value == "":
                continue
            values[name] = text_value
        try:
            rows.append(ObservationIn.model_validate(values).model_dump())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise Unprocessable(f"CSV line {line}: {problems}") from None
    if not rows:
        raise Unprocessable("the CSV has a header but no rows")
    for row in rows:
        # pydantic's float parsing already refused nan/inf strings; this guards the invariant.
        assert all(math.isfinite(row[k]) for k in ("n0", "rho", "l0", "tokens", "loss"))
    return rows


def list_observations(
    session: Session,
    *,
    family: str | None,
    method: str | None,
    run_id: str | None,
    offset: int,
    limit: int,
    recipe: str | None = None,
) -> tuple[list[Observation], int]:
    """One page of observations and the total matching the filters."""
    return repo.list_page(
        session,
        family=family,
        method=method,
        run_id=run_id,
        recipe=recipe,
        offset=offset,
        limit=limit,
    )
