"""The Celery tasks, and nothing else: each is one line into the module that does the work.

A job's message carries its id only (``workers.attempt`` claims the row and reads the rest);
the reaper's runs on the beat schedule (``workers.celery_app``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.core import queue
from app.services import reaper
from workers.attempt import attempt_job
from workers.celery_app import app


@app.task(  # type: ignore[untyped-decorator]
    name="workers.tasks.run_job", acks_late=True, reject_on_worker_lost=True
)
def run_job(job_id: str) -> str:
    """Run job ``job_id`` (its id is the whole message; the row says the rest)."""
    return attempt_job(job_id)


@app.task(name="workers.tasks.reap_expired", acks_late=True)  # type: ignore[untyped-decorator]
def reap_expired() -> dict[str, Any]:
    """Send again jobs never sent or whose worker died; fail or cancel those that must end.

    Also deletes the embedded broker's delivered message files older than an hour.
    """
    report = asdict(reaper.reap())
    report["pruned_messages"] = queue.prune_delivered()
    return report
