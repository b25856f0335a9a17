"""Thin Celery tasks: claim the job row, run the pipeline, record what it reports, finish.

The message carries the job id only; everything else is read from the row (the request through
the same ``JobRequest`` model the API validated it with, then ``JobSpec.from_request``), and every
write goes through ``app.services.job_lease`` while this process holds the job's lease. A
background thread renews the lease (the heartbeat), so the lease means "this attempt's process is
alive" whatever phase the pipeline is in; it dies with the process, the lease expires and the
reaper sends the job again, which resumes from its last complete checkpoint.

torch is imported only inside ``run_job`` (in the forked child), never in the worker's parent.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from app.core import queue
from app.core.config import get_settings
from app.core.paths import resolve_job_paths
from app.services import job_lease, reaper
from app.services import stop_rule as stop_rule_service
from app.services.job_lease import Claimed, Lease
from app.services.stop_rule import RunPoint
from workers.celery_app import app

if TYPE_CHECKING:
    from workers.ml.pipeline import CheckpointPoint, Decision, Measured

log = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """Another worker took the job (this attempt's lease expired); stop without writing."""


def lease_owner() -> str:
    """A unique owner name for one attempt: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews the lease every third of its length from a daemon thread; notes when it is lost."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.seconds / 3):
            try:
                if not job_lease.renew(self.lease):
                    self.lost.set()
                    return
            except Exception as exc:  # a database blip: try again at the next beat
                log.warning("heartbeat of job %s failed: %s", self.lease.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


BELOW_L0_WARNING = (
    "checkpoint losses fell below L0 beyond the evaluation noise (the dense model looks "
    "under-trained, docs/law.md §3); those observations are excluded from fits"
)


class DbHooks:
    """The pipeline's hooks: progress, measured values, observations, cancel and early stop.

    Every write goes through ``app.services.job_lease`` under this attempt's lease; a write that
    finds the lease gone raises :class:`LeaseLostError`, which ends the attempt without writing.
    """

    def __init__(self, claimed: Claimed, lease_lost: threading.Event) -> None:
        self.claimed, self.lease, self.lease_lost = claimed, claimed.lease, lease_lost
        self.measured: dict[str, Any] | None = None
        self._last_write = 0.0
        # Progress writes: often enough for a live ETA, rarely enough to cost nothing.
        self._write_every_s = min(2.0, self.lease.seconds / 3)
        self._rate_origin: tuple[float, int] | None = None
        self.tokens_total = int(claimed.request.tokens)

    def _check_lease(self) -> None:
        if self.lease_lost.is_set():
            raise LeaseLostError(f"job {self.claimed.id}: the lease was taken over")

    def _eta(self, tokens_done: int, tokens_total: int) -> float | None:
        now = time.monotonic()
        if self._rate_origin is None:
            self._rate_origin = (now, tokens_done)
            return None
        start, start_tokens = self._rate_origin
        if tokens_done <= start_tokens or now <= start:
            return None
        rate = (tokens_done - start_tokens) / (now - start)
        return max(0.0, (tokens_total - tokens_done) / rate)

    def on_measured(self, measured: Measured) -> None:
        """Store the measured sizes, ρ and losses (every attempt: a resume re-sends them)."""
        self._check_lease()
        self.measured = asdict(measured)
        if not job_lease.record_measured(self.lease, self.measured):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost before measuring was recorded")

    def _row(self, point: CheckpointPoint) -> dict[str, Any]:
        assert self.measured is not None, "on_measured comes before any checkpoint"
        return job_lease.observation_row(
            self.claimed,
            measured=self.measured,
            tokens=point.tokens,
            loss=point.loss,
            below_l0=point.below_l0,
            note=point.note,
        )

    def on_resume(self, tokens_done: int, points: list[CheckpointPoint]) -> None:
        """Replace what the lost attempt stored after ``tokens_done`` by the saved points."""
        self._check_lease()
        rows = [self._row(p) for p in points]
        if not job_lease.record_resume(self.lease, tokens_done, rows):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost while resuming")

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        """Throttled progress write (also a lease renewal)."""
        self._check_lease()
        self.tokens_total = int(tokens_total)
        now = time.monotonic()
        eta_s = self._eta(tokens_done, tokens_total)
        if now - self._last_write < self._write_every_s and tokens_done < tokens_total:
            return
        self._last_write = now
        if not job_lease.renew(
            self.lease,
            tokens_done=int(tokens_done),
            tokens_total=int(tokens_total),
            eta_s=eta_s,
        ):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost")

    def on_checkpoint(
        self, point: CheckpointPoint, points: list[CheckpointPoint]
    ) -> tuple[Decision, str | None]:
        """Record the point; CANCEL when asked to, STOP when the stop rule says so."""
        from workers.ml.pipeline import Decision

        self._check_lease()
        state = job_lease.record_checkpoint(
            self.lease,
            row=self._row(point),
            progress={
                "tokens_done": int(point.tokens),
                "tokens_total": max(self.tokens_total, int(point.tokens)),
            },
            warning=BELOW_L0_WARNING if point.below_l0 else None,
        )
        if not state.lease_held:
            raise LeaseLostError(f"job {self.claimed.id}: lease lost at a checkpoint")
        if state.cancel_requested:
            return Decision.CANCEL, "cancel requested"
        rule = self.claimed.request.stop_rule
        if rule is not None:
            decision = stop_rule_service.decide(rule, self._run_points(points), self._earlier)
            if decision.stop:
                return Decision.STOP, decision.reason
        return Decision.CONTINUE, None

    def _run_points(self, points: list[CheckpointPoint]) -> list[RunPoint]:
        assert self.measured is not None
        n0, rho, l0 = (float(self.measured[k]) for k in ("n0", "rho", "l0"))
        return [
            RunPoint(self.claimed.id, n0, rho, l0, float(p.tokens), float(p.loss))
            for p in points
            if not p.below_l0
        ]

    def _earlier(self) -> list[RunPoint]:
        assert self.measured is not None
        return job_lease.earlier_runs(self.claimed, str(self.measured["protocol"]))


def job_dirs(job_id: str) -> tuple[Path, Path]:
    """(workdir with the resumable training state, artifact directory) of a job."""
    root = Path(get_settings().artifact_root)
    return root / "_work" / job_id, root / job_id


def execute_job(job_id: str) -> str:
    """Claim and run one job to its end; returns what happened (for logs and tests)."""
    claimed = job_lease.claim(job_id, lease_owner(), get_settings().job_lease_s)
    if claimed is None:
        return "not claimed"
    with Heartbeat(claimed.lease) as beat:
        return _run_claimed(claimed, beat)


def _run_claimed(claimed: Claimed, beat: Heartbeat) -> str:
    lease = claimed.lease
    workdir, artifact_dir = job_dirs(claimed.id)
    try:
        import torch

        from workers.ml.pipeline import JobSpec, run_pipeline

        # On CPU, half the cores (at most 4): the API and the database share the machine, and
        # tiny models gain nothing from more threads.
        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
        # Paths are resolved inside their roots again: the roots or the files may have changed
        # since submission.
        spec = JobSpec.from_request(claimed.request, resolve_job_paths(claimed.request))
        if spec.devices == 1:
            hooks = DbHooks(claimed, beat.lost)
            outcome = run_pipeline(spec, workdir=workdir, artifact_dir=artifact_dir, hooks=hooks)
        else:
            from workers.launch import check_devices, run_on_devices

            check_devices(spec, get_settings().worker_devices)
            outcome = run_on_devices(
                spec,
                workdir=workdir,
                artifact_dir=artifact_dir,
                job_id=claimed.id,
                owner=lease.owner,
                lease_s=lease.seconds,
                lease_lost=beat.lost,
            )
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
    if outcome.status == "cancelled":
        job_lease.finish(lease, "cancelled", error=None, eta_s=None)
        shutil.rmtree(workdir, ignore_errors=True)
        return "cancelled"
    stopped = outcome.status == "stopped_early"
    last_tokens = outcome.points[-1].tokens if outcome.points else 0
    # Refit before the job reads "succeeded", so a client that sees it finished sees the fit.
    if claimed.request.refit:
        job_lease.refit(lease, claimed.family, claimed.method)
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


@app.task(  # type: ignore[untyped-decorator]
    name="workers.tasks.run_job", acks_late=True, reject_on_worker_lost=True
)
def run_job(job_id: str) -> str:
    """Run job ``job_id`` (its id is the whole message; the row says the rest)."""
    return execute_job(job_id)


@app.task(name="workers.tasks.reap_expired", acks_late=True)  # type: ignore[untyped-decorator]
def reap_expired() -> dict[str, Any]:
    """Send again jobs never sent or whose worker died; fail or cancel those that must end.

    Also deletes the embedded broker's delivered message files older than an hour.
    """
    report = asdict(reaper.reap())
    report["pruned_messages"] = queue.prune_delivered()
    return report
