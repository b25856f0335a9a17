"""Queries on jobs. Functions take a session, flush when they write, never commit.

Every state change a worker makes is a *conditional* UPDATE (status, lease owner) so that two
processes acting on the same job cannot both win: the row count says who did.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, false, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models.job import FINAL_STATUSES, Job

#: Statuses in which a worker holds (or held) a lease.
LEASED_STATUSES = ("running", "cancelling")


def add(session: Session, job: Job) -> Job:
    """Insert a new job row."""
    session.add(job)
    session.flush()
    return job


def get(session: Session, job_id: str) -> Job | None:
    """The job with this id, or None."""
    return session.get(Job, job_id)


def get_fresh(session: Session, job_id: str) -> Job | None:
    """The job re-read from the database (another process may have changed it)."""
    return session.get(Job, job_id, populate_existing=True)


def get_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job submitted earlier with this idempotency key, or None."""
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def list_page(
    session: Session,
    *,
    status: str | None = None,
    family: str | None = None,
    method: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, and the total matching count."""
    conditions: list[Any] = []
    if status is not None:
        conditions.append(Job.status == status)
    if family is not None:
        conditions.append(Job.family == family)
    if method is not None:
        conditions.append(Job.method == method)
    total = session.scalar(select(func.count()).select_from(Job).where(*conditions))
    rows = session.scalars(
        select(Job)
        .where(*conditions)
        .order_by(Job.created_at.desc(), Job.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), int(total or 0)


def mark_enqueued(session: Session, job_id: str, now: datetime | None = None) -> None:
    """Record that the broker accepted a message for this job."""
    now = now or utcnow()
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=now, updated_at=now))
    session.flush()


def claim(
    session: Session, job_id: str, owner: str, lease_s: float, now: datetime | None = None
) -> bool:
    """Take the job for ``owner`` with ONE conditional UPDATE; True if this caller won.

    Claimable: ``queued``, or ``running`` with an expired lease (its worker died), and no cancel
    requested. The update sets ``running``, the lease, the first start time and
    ``attempts + 1``. Zero rows changed means another worker holds it or it is finished.
    """
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(false()),
            or_(
                Job.status == "queued",
                and_(Job.status == "running", Job.lease_expires_at < now),
            ),
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0)) == 1


def heartbeat(
    session: Session,
    job_id: str,
    owner: str,
    lease_s: float,
    now: datetime | None = None,
    **values: Any,
) -> bool:
    """Renew ``owner``'s lease (and write ``values``, e.g. progress); False if it was lost."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(LEASED_STATUSES))
        .values(
            lease_expires_at=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            updated_at=now,
            **values,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0)) == 1


def finish(
    session: Session,
    job_id: str,
    owner: str | None,
    status: str,
    now: datetime | None = None,
    **values: Any,
) -> bool:
    """Move the job to a final ``status`` if ``owner`` still holds it (None: whoever holds it).

    The lease is cleared. False when the job is already final or leased by someone else.
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"{status!r} is not a final status")
    now = now or utcnow()
    conditions: list[Any] = [Job.id == job_id, Job.status.not_in(FINAL_STATUSES)]
    if owner is not None:
        conditions.append(Job.lease_owner == owner)
    result = session.execute(
        update(Job)
        .where(*conditions)
        .values(
            status=status,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
            **values,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0)) == 1


def requeue(session: Session, job_id: str, owner: str, now: datetime | None = None) -> bool:
    """Hand a running job back to the queue if ``owner`` still holds it: ``queued``, no lease,
    not yet sent, and the attempt not counted (it ended by its time limit, not by a fault).
    False when the job is no longer this owner's."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(
            status="queued",
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            eta_s=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0)) == 1


def request_cancel(session: Session, job_id: str, now: datetime | None = None) -> str | None:
    """Cancel cooperatively; returns the status after the request (None: unknown job).

    ``queued`` becomes ``cancelled`` at once (a worker that receives the message later finds
    nothing to claim); ``running`` becomes ``cancelling`` with ``cancel_requested`` set, and the
    worker ends it at its next checkpoint. Final jobs are left as they are.
    """
    now = now or utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(LEASED_STATUSES))
        .values(status="cancelling", cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    job = get_fresh(session, job_id)
    return None if job is None else job.status


def unsent(session: Session, older_than: datetime) -> list[str]:
    """Queued jobs whose first send never succeeded (``enqueued_at`` null) before ``older_than``."""
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == "queued",
                Job.enqueued_at.is_(None),
                Job.created_at < older_than,
            )
            .order_by(Job.created_at)
        ).all()
    )


def expired(session: Session, now: datetime | None = None) -> list[Job]:
    """Running or cancelling jobs whose lease has expired (their worker is gone)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(Job)
            .where(Job.status.in_(LEASED_STATUSES), Job.lease_expires_at < now)
            .order_by(Job.created_at)
        ).all()
    )


def ids(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """The jobs with these ids (any order)."""
    return list(session.scalars(select(Job).where(Job.id.in_(list(job_ids)))).all())


def add_warning(session: Session, job: Job, warning: str) -> bool:
    """Append ``warning`` to the job's warnings unless it is there already; True if added."""
    if warning in (job.warnings or []):
        return False
    job.warnings = [*(job.warnings or []), warning]
    session.flush()
    return True
