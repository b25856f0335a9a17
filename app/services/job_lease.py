"""The worker's side of a job: claim it, then write only while holding its lease.

The database row is the source of truth (docs/reliability.md). A worker claims a job with one
conditional UPDATE and gets a :class:`Lease`; every write it makes afterwards (heartbeat,
progress, measured values, observations, warnings, the refit, the final status) runs in one short
transaction that first renews that lease with a conditional UPDATE on (job id, owner). Zero rows
changed means another worker took the job over: the write is dropped and the caller learns it
from the return value. On PostgreSQL the UPDATE locks the row until commit and on SQLite the
transaction holds the write lock (``BEGIN IMMEDIATE``), so the lease cannot change hands between
the check and the write.

Only ``workers.tasks`` calls these functions; the API's use-cases are in ``app.services.jobs`` and
the reaper's in ``app.services.reaper``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.db.models.job import Job
from app.db.session import session_scope
from app.repositories import jobs as repo
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import fits as fits_service
from app.services import jobs as jobs_service
from app.services.stop_rule import RunPoint

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Lease:
    """One attempt's hold on a job: who holds it and how long each renewal lasts."""

    job_id: str
    owner: str
    seconds: float


@dataclass(frozen=True)
class Claimed:
    """A job this worker holds: its lease, the validated request and the attempt number."""

    lease: Lease
    request: JobRequest
    family: str
    method: str
    attempts: int
    max_attempts: int

    @property
    def id(self) -> str:
        return self.lease.job_id

    @property
    def resumed(self) -> bool:
        return self.attempts > 1

    @property
    def recipe(self) -> str:
        """The job's recovery recipe (``full``, ``lora``, ``distill``): its observations' and
        its refit's."""
        return self.request.recipe.kind


def claim(job_id: str, owner: str, lease_s: float) -> Claimed | None:
    """Claim ``job_id`` (one conditional UPDATE); None when another worker has it or it is done.

    The stored request is read back through the model the API validated it with, so a request
    stored by an earlier version gets today's defaults for the fields it lacks. An attempt beyond
    ``max_attempts`` is not run: the job is failed with the reason and nothing re-queues it.
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
        return _claimed(job, owner, lease_s)


def held(job_id: str, owner: str, lease_s: float) -> Claimed | None:
    """The job as :func:`claim` returned it, for another process of the same attempt (a
    training rank) that writes under the attempt's lease; None when ``owner`` no longer holds it."""
    with session_scope() as session:
        job = repo.get_fresh(session, job_id)
        if job is None or job.lease_owner != owner or job.status not in repo.LEASED_STATUSES:
            return None
        return _claimed(job, owner, lease_s)


def _claimed(job: Job, owner: str, lease_s: float) -> Claimed:
    return Claimed(
        lease=Lease(job.id, owner, lease_s),
        request=JobRequest.model_validate(job.request),
        family=job.family,
        method=job.method,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
    )


def _while_held(lease: Lease, write: Callable[[Session], T], **values: Any) -> T | None:
    """Renew ``lease`` (writing ``values``) and run ``write`` in the same transaction; None,
    with nothing written, when the lease is no longer this worker's."""
    with session_scope() as session:
        if not repo.heartbeat(session, lease.job_id, lease.owner, lease.seconds, **values):
            session.rollback()
            return None
        return write(session)


def _nothing(_session: Session) -> bool:
    return True


def renew(lease: Lease, **values: Any) -> bool:
    """Renew the lease, writing ``values`` (progress, ETA); False when the lease was lost."""
    return _while_held(lease, _nothing, **values) is not None


def record_measured(lease: Lease, measured: Mapping[str, Any]) -> bool:
    """Store what the worker measured after pruning (sizes, ρ, L0, protocol)."""
    return renew(lease, measured=dict(measured))


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
        "protocol": str(measured["protocol"]),
        "source": "job",
        "recipe": claimed.recipe,
        "excluded": bool(below_l0),
        "note": note,
    }


def record_resume(lease: Lease, tokens_done: int, rows: Sequence[Mapping[str, Any]]) -> bool:
    """A resumed attempt: drop points the lost attempt stored after ``tokens_done`` and re-store
    the saved state's points (one per checkpoint whatever the last attempt managed to write)."""

    def write(session: Session) -> bool:
        observations_repo.delete_after(session, lease.job_id, float(tokens_done))
        if rows:
            observations_repo.upsert(session, rows)
        return True

    done = int(tokens_done)
    return _while_held(lease, write, resumed_from_tokens=done, tokens_done=done) is not None


@dataclass(frozen=True)
class CheckpointState:
    """What a checkpoint learned from the database: lease still held, cancel requested."""

    lease_held: bool
    cancel_requested: bool


def record_checkpoint(
    lease: Lease,
    *,
    row: Mapping[str, Any],
    progress: Mapping[str, Any],
    warning: str | None = None,
) -> CheckpointState:
    """Store one checkpoint's observation, progress and warning in one short transaction."""

    def write(session: Session) -> CheckpointState:
        observations_repo.upsert(session, [row])
        job = repo.get_fresh(session, lease.job_id)
        if job is None:
            return CheckpointState(True, False)
        if warning is not None:
            repo.add_warning(session, job, warning)
        return CheckpointState(True, bool(job.cancel_requested))

    state = _while_held(lease, write, **progress)
    return state if state is not None else CheckpointState(False, False)


def earlier_runs(claimed: Claimed, protocol: str) -> list[RunPoint]:
    """The kept points of other runs of the job's family, method and recipe under
    ``protocol``."""
    with session_scope() as session:
        rows = observations_repo.other_runs(
            session,
            family=claimed.family,
            method=claimed.method,
            protocol=protocol,
            run_id=claimed.id,
            recipe=claimed.recipe,
        )
        return [RunPoint(r.run_id, r.n0, r.rho, r.l0, r.tokens, r.loss) for r in rows]


def add_warning(lease: Lease, warning: str) -> bool:
    """Append a warning to the job; False (nothing written) when the lease was lost."""
    return _while_held(lease, lambda s: _add_warning(s, lease.job_id, warning)) is not None


def _add_warning(session: Session, job_id: str, warning: str) -> bool:
    job = repo.get_fresh(session, job_id)
    return job is not None and repo.add_warning(session, job, warning)


def refit(lease: Lease, family: str, method: str, recipe: str = "full") -> str | None:
    """Refit the family/method/recipe's P² law (on that recipe's observations only) and make it
    their default.

    The fit is computed without a lock and stored, with the warning that names it, only while the
    lease is held: a worker whose job was taken over changes no default. A failed fit becomes a
    warning (the job succeeded; a refit problem must not undo that). Returns the new fit's id.
    """
    scope = f"{family}/{method}" + ("" if recipe == "full" else f" ({recipe})")
    try:
        with session_scope() as session:
            fit = fits_service.compute_fit(
                session, form="p2", family=family, method=method, recipe=recipe
            )
    except Exception as exc:
        add_warning(lease, f"refit of {scope} failed: {exc}")
        return None

    def write(session: Session) -> str:
        fits_service.store_fit(session, fit, make_default=True)
        _add_warning(
            session,
            lease.job_id,
            f"refit {fit.id} of {scope} is now the default fit",
        )
        return fit.id

    return _while_held(lease, write)


def finish(lease: Lease, status: str, **values: Any) -> bool:
    """Move the job to a final status if this worker still holds it."""
    with session_scope() as session:
        return repo.finish(session, lease.job_id, lease.owner, status, **values)


def requeue(lease: Lease) -> bool:
    """End this attempt at its time limit and send the job again: the next attempt (on any
    worker, with any number of devices) goes on from the state this one saved. False when the
    lease was already lost."""
    with session_scope() as session:
        if not repo.requeue(session, lease.job_id, lease.owner):
            return False
    with session_scope() as session:
        jobs_service.send(session, lease.job_id)  # refused by the broker: the reaper sends it
    return True
