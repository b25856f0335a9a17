"""Job routes: submit a prune → post-train job, read it, list, cancel, its observations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import JSONResponse

from app.api.deps import SessionDep, require_api_key
from app.schemas.common import ERRORS, UNAUTHORIZED, ErrorResponse, unprocessable
from app.schemas.jobs import (
    JobAccepted,
    JobDryRun,
    JobObservationPage,
    JobOut,
    JobPage,
    JobRequest,
    JobStatus,
)
from app.schemas.observations import ObservationOut
from app.services import jobs as service

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERRORS)

JOB_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No job has this id."}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The database could not store the job."}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The job has already finished."}
}

#: What a submission refuses beyond its request schema, before anything is queued (docs/api.md,
#: POST /jobs/prune-finetune).
JOB_422 = unprocessable(
    "`tokens` below `checkpoints`;",
    "data: a `model` or `dataset` path outside its root or missing; a hub id without "
    "ALLOW_HUB_MODELS; a `rho` above what the method can reach on this model (the message names "
    "the maximum); a LoRA `recipe.target_modules` entry the model's layers do not have (the "
    "message names it and the projections they have); a dataset directory that is neither a "
    "saved dataset nor a valid tokenised one, was tokenised with another tokenizer, or holds "
    "too few held-out blocks;",
    "memory (not for a dry run, which reports it): a job whose estimated peak per device, from "
    "the model's config.json, exceeds `device_memory_gib` (default DEVICE_MEMORY_GIB); the "
    "message names the need per device, the device's memory and the fewest devices that fit, "
    "or that none does.",
)
DRY_RUN: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobDryRun,
        "description": "A dry run (`dry_run: true`): the pruning plan and the memory per device "
        "the job would have; nothing is stored or queued.",
    }
}


@router.post(
    "/prune-finetune",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    dependencies=[Depends(require_api_key)],
    responses={**DRY_RUN, **UNAUTHORIZED, **UNAVAILABLE, **JOB_422},
)
def create_job(
    request: JobRequest, session: SessionDep, response: Response
) -> JobAccepted | JSONResponse:
    """Queue a prune → post-train job; 202 with its id (also while the broker is down: the job
    is stored and sent as soon as the broker is back). With `dry_run: true`, 200 with the plan
    and the memory estimate, and nothing stored."""
    if request.dry_run:
        answer = JobDryRun.model_validate(service.dry_run(request))
        return JSONResponse(answer.model_dump(mode="json"))
    job, _created = service.submit(session, request)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobAccepted(id=job.id, status=job.status)  # type: ignore[arg-type]


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    *,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    family: Annotated[str | None, Query(max_length=64)] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    """List jobs, newest first, filtered by status, family and method."""
    rows, total = service.list_jobs(
        session, status=status_, family=family, method=method, offset=offset, limit=limit
    )
    return JobPage(
        items=[JobOut.model_validate(service.job_out(job)) for job in rows],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get("/{job_id}", response_model=JobOut, responses=JOB_NOT_FOUND)
def read_job(job_id: str, session: SessionDep) -> JobOut:
    """Read a job: status, progress with ETA, measured ρ and L0, artifact, error, attempts."""
    return JobOut.model_validate(service.job_out(service.get_job(session, job_id)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_api_key)],
    responses={**UNAUTHORIZED, **JOB_NOT_FOUND, **CONFLICT},
)
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    """Cancel a job: a queued one never starts; a running one stops at its next checkpoint."""
    return JobOut.model_validate(service.job_out(service.cancel(session, job_id)))


@router.get("/{job_id}/observations", response_model=JobObservationPage, responses=JOB_NOT_FOUND)
def read_job_observations(
    job_id: str,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobObservationPage:
    """The losses a job recorded, one per checkpoint (run_id = the job id)."""
    rows, total = service.job_observations(session, job_id, offset=offset, limit=limit)
    return JobObservationPage(
        items=[ObservationOut.model_validate(row, from_attributes=True) for row in rows],
        total=total,
        offset=offset,
        limit=limit,
    )
