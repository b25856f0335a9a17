"""`POST /observations` (JSON or CSV) and `GET /observations` (paged)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, require_api_key
from app.core.config import get_settings
from app.core.errors import AppError, Unprocessable
from app.core.recipes import RecipeName
from app.schemas.common import ERRORS, NO_NUL, UNAUTHORIZED, unprocessable
from app.schemas.observations import (
    CSV_COLUMNS,
    CSV_OPTIONAL,
    EXAMPLE_CSV,
    EXAMPLE_OBSERVATION,
    ObservationOut,
    ObservationPage,
    ObservationsCreated,
    ObservationsIn,
)
from app.services import observations as service

router = APIRouter(tags=["observations"], responses=ERRORS)


class UnsupportedMediaTypeError(AppError):
    """The upload is neither JSON nor CSV."""

    status_code = 415


def _parse(body: bytes, content_type: str) -> list[dict[str, Any]]:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Unprocessable("the CSV is not UTF-8 text") from None
        limit = get_settings().max_observations_per_upload
        return service.parse_csv(text, max_rows=limit)
    if media in ("", "application/json") or media.endswith("+json"):
        try:
            batch = ObservationsIn.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            ) from None
        return [o.model_dump() for o in batch.observations]
    raise UnsupportedMediaTypeError(
        f"unsupported content type {media!r}: send application/json or text/csv"
    )


async def read_upload(request: Request) -> list[dict[str, Any]]:
    """The uploaded observations, validated (parsed in a worker thread: uploads can be big)."""
    body = await request.body()
    return await run_in_threadpool(_parse, body, request.headers.get("content-type", ""))


_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ObservationsIn"},
                "examples": {
                    "two points": {
                        "summary": "Two checkpoints of one run",
                        "value": {
                            "observations": [
                                EXAMPLE_OBSERVATION,
                                {**EXAMPLE_OBSERVATION, "tokens": 2.0e8, "loss": 2.66},
                            ]
                        },
                    }
                },
            },
            "text/csv": {
                "schema": {
                    "type": "string",
                    "description": "A header line naming the columns "
                    f"({', '.join(CSV_COLUMNS)}; optional {', '.join(CSV_OPTIONAL)}), "
                    "then one observation per line.",
                },
                "example": EXAMPLE_CSV,
            },
        },
    }
}

#: The CSV upload is text the OpenAPI schema does not describe beyond its media type.
OBSERVATIONS_422 = unprocessable(
    "a CSV that is not UTF-8, is empty, lacks a required column in its header line, or has a "
    "bad row (the message names its line).",
)


@router.post(
    "/observations",
    status_code=201,
    response_model=ObservationsCreated,
    dependencies=[Depends(require_api_key)],
    openapi_extra=_UPLOAD_DOC,
    responses={
        **UNAUTHORIZED,
        **OBSERVATIONS_422,
        415: {"description": "Neither JSON nor CSV."},
    },
)
def create_observations(
    session: SessionDep, rows: Annotated[list[dict[str, Any]], Depends(read_upload)]
) -> dict[str, int]:
    """Store observed losses (JSON or CSV); repeated (run_id, tokens) are counted, not stored."""
    inserted, duplicates = service.add_observations(session, rows)
    return {"inserted": inserted, "duplicates": duplicates}


@router.get("/observations", response_model=ObservationPage)
def list_observations(
    session: SessionDep,
    *,
    family: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    method: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    run_id: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    recipe: RecipeName | None = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """List stored observations, filtered and paged (ordered by run and tokens)."""
    rows, total = service.list_observations(
        session,
        family=family,
        method=method,
        run_id=run_id,
        recipe=recipe,
        offset=offset,
        limit=limit,
    )
    return {
        "items": [ObservationOut.model_validate(r) for r in rows],
        "total": total,
        "offset": offset,
        "limit": limit,
    }
