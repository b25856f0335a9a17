"""The API's job use-cases: submit, read, list, cancel, and a job's response shape.

The database row is the source of truth (docs/reliability.md). Submitting checks the request
against what only the server knows (paths inside their roots, the ρ each method can reach on the
model, from its ``config.json``, a tokenised dataset's manifest and tokenizer), writes and
*commits* the row, then sends the job id by name; a failed send leaves ``enqueued_at`` null and
the reaper sends it later, so the API answers 202 even while the broker is down (503 only if the
row could not be written). The worker's lease-guarded writes are in ``app.services.job_lease``,
the reaper in ``app.services.reaper``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.core import queue, tokens
from app.core.config import get_settings
from app.core.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from app.core.paths import JobPaths, resolve_job_paths
from app.core.pruning import PlanError, check_reach
from app.db.models.job import FINAL_STATUSES, Job
from app.db.models.observation import Observation
from app.repositories import jobs as repo
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import admission

log = logging.getLogger(__name__)


def model_config(model: str) -> dict[str, Any] | None:
    """The `config.json` of a local model directory (already confined to MODEL_ROOT), or None
    for a hub id or an unreadable file."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def default_family(model: str) -> str:
    """A family label for a model: its config's ``model_type`` (``llama``, ``qwen2``), else its
    folder or hub name. Runs of one architecture share a family unless the request names one."""
    model_type = (model_config(model) or {}).get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type[:64]
    return (Path(model).name or model)[:64]


def check_reachable(request: JobRequest, model: str) -> None:
    """A target above what the method can reach on this model is a 422 naming the maximum
    (docs/law.md §1), for every method, decided from the model's ``config.json`` before anything
    is queued: the plan is ``app.core.pruning``'s, the one the worker makes again from the loaded
    model and takes its counts from. A config the plan cannot read (a hub id, another
    architecture) is held only to the bound every model obeys (2:4 below one half); the worker
    then checks the loaded model."""
    try:
        check_reach(model_config(model), request.method, request.rho)
    except PlanError as exc:  # OutOfReachError, the one a valid request can meet
        raise Unprocessable(str(exc)) from None


def check_dataset(request: JobRequest, paths: JobPaths) -> None:
    """A job's dataset must meet ``app.core.tokens.check_job_dataset``'s rules — the ones the
    worker applies again when the job opens its data — or the job is a 422 that says which
    dataset, which model and why (both fingerprints on a mismatch). Decided here from the files
    alone, before anything is queued, without torch or transformers."""
    dataset = request.dataset
    try:
        tokens.check_job_dataset(
            paths.dataset,
            paths.model,
            seq_len=request.seq_len,
            eval_tokens=dataset.eval_tokens,
            eval_path=paths.eval_path,
            dataset_name=dataset.path,
            eval_name=dataset.eval_path,
            model_name=request.model,
        )
    except tokens.DatasetError as exc:
        raise Unprocessable(str(exc)) from None


# --------------------------------------------------------------------------- API side


def submit(session: Session, request: JobRequest) -> tuple[Job, bool]:
    """Queue a job: check paths, commit the row, then send its id. Returns (job, created).

    A repeated ``idempotency_key`` returns the first job (created False) and sends nothing.
    Raises PathOutsideRoot (422) for bad paths — before anything is read or written — and
    ServiceUnavailable (503) when the row cannot be written. A broker that refuses the send is
    not an error: the job stays queued and the reaper sends it once the broker is back.
    """
    settings = get_settings()
    try:
        if request.idempotency_key is not None:
            existing = repo.get_by_idempotency_key(session, request.idempotency_key)
            if existing is not None:
                session.rollback()
                return existing, False
        paths = resolve_job_paths(request, settings)
        check_reachable(request, paths.model)
        check_dataset(request, paths)
        admission.admit(request, model_config(paths.model))
        job = Job(
            idempotency_key=request.idempotency_key,
            status="queued",
            request=request.model_dump(mode="json"),
            family=request.family or default_family(paths.model),
            method=request.method,
            attempts=0,
            max_attempts=settings.job_max_attempts,
            tokens_done=0,
            tokens_total=int(request.tokens),
            warnings=[],
        )
        repo.add(session, job)
        session.commit()
    except IntegrityError:
        # Two submissions with one idempotency key raced; the other one's row is the job.
        session.rollback()
        assert request.idempotency_key is not None
        existing = repo.get_by_idempotency_key(session, request.idempotency_key)
        if existing is None:
            raise ServiceUnavailable("the job could not be stored; retry") from None
        return existing, False
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("job row not written: %s", exc)
        raise ServiceUnavailable(
            f"the database is unavailable, the job was not queued: {exc}"
        ) from exc
    send(session, job.id)
    return job, True


def dry_run(request: JobRequest) -> dict[str, Any]:
    """What submitting ``request`` would do, checked as :func:`submit` checks it, with nothing
    stored or sent: the pruning plan and the memory estimate (``app.services.admission``)."""
    paths = resolve_job_paths(request, get_settings())
    check_reachable(request, paths.model)
    check_dataset(request, paths)
    return admission.dry_run_out(admission.assess(request, model_config(paths.model)))


def send(session: Session, job_id: str) -> bool:
    """Send ``job_id`` to the workers and record it; False (logged) when the broker refused."""
    try:
        queue.send_job(job_id)
    except queue.BrokerUnavailableError as exc:
        log.warning("%s; the reaper will send it again", exc)
        return False
    try:
        repo.mark_enqueued(session, job_id)
        session.commit()
    except SQLAlchemyError as exc:
        # The message is out; a null enqueued_at only makes the reaper send a duplicate, which
        # the claim turns into a no-op.
        session.rollback()
        log.warning("job %s sent but not marked: %s", job_id, exc)
    return True


def get_job(session: Session, job_id: str) -> Job:
    """The job ``job_id``; NotFound (404) when there is none."""
    job = repo.get(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def list_jobs(
    session: Session,
    *,
    status: str | None,
    family: str | None,
    method: str | None,
    offset: int,
    limit: int,
) -> tuple[list[Job], int]:
    """One page of jobs (newest first) and the total matching the filters."""
    return repo.list_page(
        session, status=status, family=family, method=method, offset=offset, limit=limit
    )


def cancel(session: Session, job_id: str) -> Job:
    """Cancel a job: queued → cancelled now; running → cancelling (ends at its next checkpoint).

    Raises NotFound (404) for an unknown id and Conflict (409) for a finished job.
    """
    job = get_job(session, job_id)
    if job.status in FINAL_STATUSES:
        raise Conflict(f"job {job_id} is already {job.status}; nothing to cancel")
    repo.request_cancel(session, job_id)
    session.commit()
    after = repo.get_fresh(session, job_id)
    assert after is not None
    if after.status in ("succeeded", "failed"):
        raise Conflict(f"job {job_id} finished ({after.status}) before it could be cancelled")
    return after


def job_observations(
    session: Session, job_id: str, *, offset: int, limit: int
) -> tuple[list[Observation], int]:
    """The observations job ``job_id`` recorded (run_id = job id), ordered by tokens."""
    get_job(session, job_id)
    return observations_repo.list_page(session, run_id=job_id, offset=offset, limit=limit)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def job_out(job: Job) -> dict[str, Any]:
    """The API representation of a job (docs/api.md's shape plus early stop and warnings)."""
    total = max(int(job.tokens_total or 0), 0)
    done = min(max(int(job.tokens_done or 0), 0), total) if total else 0
    measured = None
    if job.measured:
        measured = {
            key: job.measured[key]
            for key in ("n0", "n_after", "rho", "l0", "loss_after_prune", "protocol", "eval_noise")
            if key in job.measured
        }
    return {
        "id": job.id,
        "status": job.status,
        "method": job.method,
        "family": job.family,
        "progress": {
            "tokens_done": done,
            "tokens_total": total,
            "fraction": (done / total) if total else 0.0,
            "eta_s": _finite(job.eta_s) if job.status in ("running", "cancelling") else None,
        },
        "measured": measured,
        "artifact": job.artifact,
        "error": job.error,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "stopped_early": job.stopped_early,
        "stop_reason": job.stop_reason,
        "stopped_at_tokens": job.stopped_at_tokens,
        "resumed_from_tokens": job.resumed_from_tokens,
        "warnings": list(job.warnings or []),
        "request": job.request,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
