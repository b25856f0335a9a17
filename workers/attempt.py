"""One attempt at a job: claim the row, run the pipeline on this process or a group of them,
record how it ended.

The message carries the job id only; everything else is read from the row (the request through
the same ``JobRequest`` model the API validated it with, then ``JobSpec.build``). torch is
imported only inside :func:`attempt_job` (in the forked Celery child), never in the worker's
parent, and nothing here builds the Celery app.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import get_settings
from app.core.paths import resolve_job_paths
from app.services import job_lease
from app.services.job_lease import Claimed
from workers.lease import DbHooks, Heartbeat, LeaseLostError, lease_owner
from workers.ml.job import JobOutcome, JobSpec

log = logging.getLogger(__name__)


def job_dirs(job_id: str) -> tuple[Path, Path]:
    """(workdir with the resumable training state, artifact directory) of a job."""
    root = Path(get_settings().artifact_root)
    return root / "_work" / job_id, root / job_id


def attempt_job(job_id: str) -> str:
    """Claim and run one job to its end; returns what happened (for logs and tests)."""
    claimed = job_lease.claim(job_id, lease_owner(), get_settings().job_lease_s)
    if claimed is None:
        return "not claimed"
    with Heartbeat(claimed.lease) as beat:
        return _attempt_claimed(claimed, beat)


def segment_s(time_limit_s: float) -> float:
    """How long an attempt trains before it saves and hands the job back: its time limit less
    a margin for the save and the hand-back (a quarter of it, at most half an hour), so it ends
    well before Celery's soft and hard limits."""
    return time_limit_s - min(1800.0, time_limit_s / 4)


def _train(claimed: Claimed, beat: Heartbeat, workdir: Path, artifact_dir: Path) -> JobOutcome:
    """The pipeline in this process (one device) or on a group of processes (several)."""
    import torch

    settings = get_settings()
    deadline = time.monotonic() + segment_s(settings.job_time_limit_s)

    # On CPU, half the cores (at most 4): the API and the database share the machine, and
    # tiny models gain nothing from more threads.
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
    # Paths are resolved inside their roots again: the roots or the files may have changed
    # since submission.
    paths = resolve_job_paths(claimed.request)
    spec = JobSpec.build(claimed.request, paths, cuda=torch.cuda.is_available())
    from workers.launch import devices_for, launch_group

    # A job goes on, from its saved state, on however many devices this worker has (up to those
    # it asked for); a job not yet started must get them all.
    devices = devices_for(spec, settings.worker_devices, started=has_state(workdir))
    if devices == 1:
        from workers.ml.pipeline import prune_and_post_train

        hooks = DbHooks(claimed, beat.lost)
        return prune_and_post_train(
            spec, workdir=workdir, artifact_dir=artifact_dir, hooks=hooks, deadline=deadline
        )
    return launch_group(
        spec,
        devices=devices,
        workdir=workdir,
        artifact_dir=artifact_dir,
        lease=claimed.lease,
        lease_lost=beat.lost,
        deadline=deadline,
    )


def has_state(workdir: Path) -> bool:
    """Whether the job saved a training state an attempt can go on from."""
    from workers.ml.checkpoint import latest_complete_state

    return latest_complete_state(workdir) is not None


def _attempt_claimed(claimed: Claimed, beat: Heartbeat) -> str:
    lease = claimed.lease
    workdir, artifact_dir = job_dirs(claimed.id)
    try:
        outcome = _train(claimed, beat, workdir, artifact_dir)
    except (LeaseLostError, InterruptedError) as exc:
        log.warning("%s; leaving the job to its new owner", exc)
        return "lease lost"
    except SoftTimeLimitExceeded:
        job_lease.finish(lease, "failed", error="the attempt hit the soft time limit")
        return "failed"
    except SQLAlchemyError:
        # The database is unreachable: nothing can be recorded now. The lease expires and the
        # reaper sends the job again, which resumes from its last checkpoint.
        raise
    except Exception as exc:
        # Everything else is a property of the job (bad spec, 2:4 above its maximum, unreadable
        # data, out of memory): a retry would fail the same way, so it fails now, with the message.
        message = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        job_lease.finish(lease, "failed", error=str(message)[:4000])
        return "failed"
    if outcome.status == "requeued":
        # Not a failed attempt: the job goes on from the state just saved, in a later one.
        return "requeued" if job_lease.requeue(lease) else "lease lost"
    if outcome.status == "cancelled":
        job_lease.finish(lease, "cancelled", error=None, eta_s=None)
        shutil.rmtree(workdir, ignore_errors=True)
        return "cancelled"
    stopped = outcome.status == "stopped_early"
    last_tokens = outcome.points[-1].tokens if outcome.points else 0
    # Refit before the job reads "succeeded", so a client that sees it finished sees the fit.
    if claimed.request.refit:
        job_lease.refit(lease, claimed.family, claimed.method, claimed.recipe)
    done = job_lease.finish(
        lease,
        "succeeded",
        artifact=str(outcome.artifact) if outcome.artifact else None,
        stopped_early=stopped,
        stop_reason=outcome.reason if stopped else None,
        stopped_at_tokens=int(last_tokens) if stopped else None,
        eta_s=None,
        **({"tokens_done": int(last_tokens)} if stopped else {}),
    )
    if not done:
        return "lease lost"
    shutil.rmtree(workdir, ignore_errors=True)
    return "stopped_early" if stopped else "succeeded"
