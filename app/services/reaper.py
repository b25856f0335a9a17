"""The reaper: a periodic pass that keeps every accepted job moving (docs/reliability.md).

It sends again jobs whose first send never reached the broker and jobs whose worker died (their
lease expired), and ends the jobs that must end: a cancel requested of a dead worker, or the last
attempt used up. It runs on Celery beat and at every worker start; it never holds a lease, so its
writes are conditional on the job still being unfinished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core import queue
from app.core.config import get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.repositories import jobs as repo

log = logging.getLogger(__name__)

#: A queued job whose send has not succeeded for this long is sent again by the reaper (the API
#: sends right after its commit; this grace keeps the two from racing).
UNSENT_GRACE_S = 5.0


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
