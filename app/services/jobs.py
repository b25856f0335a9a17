"""Job use-cases: submit, read, cancel (API side) and claim, record, finish, reap (worker side).

The database row is the source of truth (reliability.md). Submitting writes and *commits* the
row first, then sends the job id by name; a failed send leaves ``enqueued_at`` null and the reaper
sends it later, so the API answers 202 even while the broker is down (503 only if the row could
not be written). Worker-side functions each run one short transaction and act only while the
caller still holds the job's lease, so a worker that lost its lease can no longer write.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.core import queue
from app.core.config import Settings, get_settings
from app.core.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from app.core.paths import resolve_inside, resolve_model
from app.db.base import utcnow
from app.db.models.job import FINAL_STATUSES, Job
from app.db.models.observation import Observation
from app.db.session import session_scope
from app.repositories import jobs as repo
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import stop_rule as stop_rule_service
from app.services.capacity import capacity_from_config

log = logging.getLogger(__name__)

#: A queued job whose send has not succeeded for this long is sent again by the reaper (the API
#: sends right after its commit; this grace keeps the two from racing).
UNSENT_GRACE_S = 5.0


# --------------------------------------------------------------------------- paths and request


@dataclass(frozen=True)
class ResolvedPaths:
    """A job request's paths, checked to lie inside their roots."""

    model: str
    dataset: Path
    eval_path: Path | None


def resolve_paths(request: Mapping[str, Any], settings: Settings | None = None) -> ResolvedPaths:
    """Resolve the model and dataset paths inside their roots; 422 (PathOutsideRoot) if not."""
    settings = settings or get_settings()
    dataset = request["dataset"]
    model = resolve_model(
        settings.model_root, request["model"], allow_hub=settings.allow_hub_models
    )
    data_path = resolve_inside(settings.data_root, dataset["path"], what="dataset.path")
    eval_path = None
    if dataset.get("eval_path"):
        eval_path = resolve_inside(
            settings.data_root, dataset["eval_path"], what="dataset.eval_path"
        )
    return ResolvedPaths(model=model, dataset=data_path, eval_path=eval_path)


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
    """A 2:4 target above what the pattern can zero on this model is a 422 naming the maximum
    (p2-law.md §1), decided from its config before anything is queued. Architectures the
    config reader does not know are left to the worker, which reports the same maximum."""
    if request.method != "2:4":
        return
    config = model_config(model)
    capacity = capacity_from_config(config) if config is not None else None
    if capacity is not None and request.rho > capacity.max_rho_2of4:
        raise Unprocessable(
            f"2:4 sparsity can zero at most rho={capacity.max_rho_2of4:.4f} of this model's "
            f"parameters (half of every attention and MLP projection; embeddings, norms and "
            f"the head are never pruned): ask for rho <= {capacity.max_rho_2of4:.4f}"
        )


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
        paths = resolve_paths(request.model_dump(), settings)
        check_reachable(request, paths.model)
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
    """The API representation of a job (api.md's shape plus early stop and warnings)."""
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


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Claimed:
    """A job this worker holds: its id, the validated request and the attempt number."""

    id: str
    request: dict[str, Any]
    family: str
    method: str
    attempts: int
    max_attempts: int
    resumed: bool


def claim(job_id: str, owner: str, lease_s: float) -> Claimed | None:
    """Claim ``job_id`` (one conditional UPDATE); None when another worker has it or it is done.

    An attempt beyond ``max_attempts`` is not run: the job is failed with the reason and
    nothing re-queues it.
    """
    with session_scope() as session:
        if not repo.claim(session, job_id, owner, lease_s):
            return None
        job = repo.get_fresh(session, job_id)
        assert job is not None
        if job.attempts > job.max_attempts:
            repo.finish(
                session,
                job_id,
                owner,
                "failed",
                error=(
                    f"gave up after {job.max_attempts} attempts: each one ended without "
                    "finishing (worker killed, out of memory or time limit)"
                ),
            )
            return None
        return Claimed(
            id=job.id,
            request=dict(job.request),
            family=job.family,
            method=job.method,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            resumed=job.attempts > 1,
        )


def heartbeat(job_id: str, owner: str, lease_s: float, **values: Any) -> bool:
    """Renew the lease, writing ``values`` (progress); False when the lease was lost."""
    with session_scope() as session:
        return repo.heartbeat(session, job_id, owner, lease_s, **values)


def record_measured(job_id: str, owner: str, lease_s: float, measured: dict[str, Any]) -> bool:
    """Store what the worker measured after pruning (renews the lease)."""
    return heartbeat(job_id, owner, lease_s, measured=measured)


def observation_row(
    claimed: Claimed,
    *,
    measured: Mapping[str, Any],
    tokens: int,
    loss: float,
    below_l0: bool,
    note: str | None,
) -> dict[str, Any]:
    """One checkpoint as an observation of run ``job id`` (excluded when below L0)."""
    return {
        "run_id": claimed.id,
        "family": claimed.family,
        "method": claimed.method,
        "n0": float(measured["n0"]),
        "rho": float(measured["rho"]),
        "l0": float(measured["l0"]),
        "tokens": float(tokens),
        "loss": float(loss),
        "protocol": str(measured.get("protocol", "")),
        "source": "job",
        "excluded": bool(below_l0),
        "note": note,
    }


def record_resume(
    claimed: Claimed, owner: str, lease_s: float, tokens_done: int, rows: Sequence[dict[str, Any]]
) -> bool:
    """A resumed attempt: drop points the lost attempt stored after ``tokens_done`` and re-store
    the saved state's points (one per checkpoint whatever the last attempt managed to write)."""
    with session_scope() as session:
        if not repo.heartbeat(
            session,
            claimed.id,
            owner,
            lease_s,
            resumed_from_tokens=int(tokens_done),
            tokens_done=int(tokens_done),
        ):
            return False
        observations_repo.delete_after(session, claimed.id, float(tokens_done))
        if rows:
            observations_repo.upsert(session, rows)
        return True


@dataclass(frozen=True)
class CheckpointState:
    """What a checkpoint learned from the database: lease still held, cancel requested."""

    lease_held: bool
    cancel_requested: bool


def record_checkpoint(
    claimed: Claimed,
    owner: str,
    lease_s: float,
    *,
    row: dict[str, Any],
    progress: Mapping[str, Any],
    warning: str | None = None,
) -> CheckpointState:
    """Store one checkpoint's observation and progress in one short transaction."""
    with session_scope() as session:
        job = repo.get_fresh(session, claimed.id)
        if job is None or job.lease_owner != owner:
            return CheckpointState(False, False)
        values = dict(progress)
        if warning is not None and warning not in (job.warnings or []):
            values["warnings"] = [*(job.warnings or []), warning]
        if not repo.heartbeat(session, claimed.id, owner, lease_s, **values):
            return CheckpointState(False, False)
        observations_repo.upsert(session, [row])
        return CheckpointState(True, bool(job.cancel_requested))


def check_stop_rule(
    claimed: Claimed,
    rule: Mapping[str, Any],
    run: Sequence[stop_rule_service.RunPoint],
    protocol: str,
) -> stop_rule_service.StopDecision:
    """Evaluate the job's stop rule on its points, with earlier runs of its family/method."""
    parsed = stop_rule_service.StopRule(
        kind=str(rule.get("kind", "marginal")),
        threshold=float(rule["threshold"]),
        min_checkpoints=int(rule.get("min_checkpoints", 4)),
    )
    if len(run) < parsed.min_checkpoints:
        return stop_rule_service.evaluate(parsed, run)
    with session_scope() as session:
        rows = session.scalars(
            select(Observation).where(
                Observation.family == claimed.family,
                Observation.method == claimed.method,
                Observation.run_id != claimed.id,
                Observation.protocol == protocol,
                Observation.excluded.is_(False),
            )
        ).all()
        earlier = [
            stop_rule_service.RunPoint(r.run_id, r.n0, r.rho, r.l0, r.tokens, r.loss) for r in rows
        ]
    return stop_rule_service.evaluate(parsed, run, earlier)


def finish(job_id: str, owner: str | None, status: str, **values: Any) -> bool:
    """Move the job to a final status if ``owner`` still holds it."""
    with session_scope() as session:
        return repo.finish(session, job_id, owner, status, **values)


def add_warning(job_id: str, warning: str) -> None:
    """Append a warning to a job (e.g. a refit that failed)."""
    with session_scope() as session:
        job = repo.get_fresh(session, job_id)
        if job is not None and warning not in (job.warnings or []):
            job.warnings = [*(job.warnings or []), warning]


def refit(job_id: str, family: str, method: str) -> str | None:
    """Refit the family/method's P² law and make it the default; a failure becomes a warning."""
    from app.services.fits import create_fit

    try:
        with session_scope() as session:
            fit = create_fit(session, form="p2", family=family, method=method, make_default=True)
            fit_id = fit.id
    except Exception as exc:  # the job succeeded; a refit problem must not undo that
        add_warning(job_id, f"refit of {family}/{method} failed: {exc}")
        return None
    add_warning(job_id, f"refit {fit_id} of {family}/{method} is now the default fit")
    return fit_id


# --------------------------------------------------------------------------- reaper


@dataclass(frozen=True)
class ReapReport:
    """What one reaper pass did."""

    resent: list[str]
    failed: list[str]
    cancelled: list[str]
    send_errors: int


def reap(
    *,
    now: datetime | None = None,
    unsent_grace_s: float = UNSENT_GRACE_S,
    sender: Callable[[str], None] | None = None,
) -> ReapReport:
    """Re-send jobs whose send never succeeded and jobs whose worker died (lease expired).

    An expired job with a cancel request ends ``cancelled``; one that used all its attempts
    ends ``failed``; the rest are sent again (at most once per lease period, so an absent worker
    does not pile up messages; duplicates are harmless, the claim lets one through).
    """
    settings = get_settings()
    now = now or utcnow()
    sender = sender or queue.send_job
    lease_s = settings.job_lease_s
    to_send: list[str] = []
    failed: list[str] = []
    cancelled: list[str] = []
    with session_scope() as session:
        to_send.extend(repo.unsent(session, now - timedelta(seconds=unsent_grace_s)))
        for job in repo.expired(session, now):
            if job.cancel_requested:
                if repo.finish(
                    session,
                    job.id,
                    None,
                    "cancelled",
                    error="the worker was lost while cancelling",
                    now=now,
                ):
                    cancelled.append(job.id)
            elif job.attempts >= job.max_attempts:
                if repo.finish(
                    session,
                    job.id,
                    None,
                    "failed",
                    now=now,
                    error=(
                        f"gave up after {job.attempts} attempts: the worker stopped renewing "
                        "its lease (killed, out of memory or time limit)"
                    ),
                ):
                    failed.append(job.id)
            elif job.enqueued_at is None or job.enqueued_at < now - timedelta(seconds=lease_s):
                to_send.append(job.id)
    # Send outside the transaction: a slow broker must not hold the database's write lock.
    resent: list[str] = []
    errors = 0
    for job_id in to_send:
        try:
            sender(job_id)
        except Exception as exc:
            errors += 1
            log.warning("reaper could not send job %s: %s", job_id, exc)
            continue
        resent.append(job_id)
    if resent:
        with session_scope() as session:
            for job_id in resent:
                repo.mark_enqueued(session, job_id, now=utcnow())
    return ReapReport(resent=resent, failed=failed, cancelled=cancelled, send_errors=errors)
