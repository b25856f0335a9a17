"""Thin Celery tasks: claim the job row, run the pipeline, record what it reports, finish.

The message carries the job id only; everything else is read from the row, and every write goes
through ``app.services.jobs`` while this process holds the job's lease. A background thread
renews the lease (the heartbeat), so the lease means "this attempt's process is alive" whatever
phase the pipeline is in; it dies with the process, the lease expires and the reaper sends the
job again, which resumes from its last complete checkpoint.

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
from app.services import jobs as service
from app.services.stop_rule import RunPoint
from workers.celery_app import app

if TYPE_CHECKING:
    from workers.ml.pipeline import CheckpointPoint, Decision, JobSpec, Measured

log = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """Another worker took the job (this attempt's lease expired); stop without writing."""


def lease_owner() -> str:
    """A unique owner name for one attempt: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews the lease every third of its length from a daemon thread; notes when it is lost."""

    def __init__(self, job_id: str, owner: str, lease_s: float) -> None:
        self.job_id, self.owner, self.lease_s = job_id, owner, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not service.heartbeat(self.job_id, self.owner, self.lease_s):
                    self.lost.set()
                    return
            except Exception as exc:  # a database blip: try again at the next beat
                log.warning("heartbeat of job %s failed: %s", self.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class DbHooks:
    """The pipeline's hooks: progress, measured values, observations, cancel and early stop."""

    def __init__(self, claimed: service.Claimed, owner: str, lease_s: float, beat: Heartbeat):
        self.claimed, self.owner, self.lease_s, self.beat = claimed, owner, lease_s, beat
        self.measured: dict[str, Any] | None = None
        self.stop_rule: dict[str, Any] | None = claimed.request.get("stop_rule")
        self._last_write = 0.0
        # Progress writes: often enough for a live ETA, rarely enough to cost nothing.
        self._write_every_s = min(2.0, lease_s / 3)
        self._rate_origin: tuple[float, int] | None = None
        self.stopped_at: int | None = None
        self.tokens_total = int(claimed.request.get("tokens", 0))

    def _check_lease(self) -> None:
        if self.beat.lost.is_set():
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

    def _progress(self, tokens_done: int, tokens_total: int) -> dict[str, Any]:
        return {
            "tokens_done": int(tokens_done),
            "tokens_total": int(tokens_total),
            "eta_s": self._eta(tokens_done, tokens_total),
        }

    def on_measured(self, measured: Measured) -> None:
        """Store the measured sizes, ρ and losses (every attempt: a resume re-sends them)."""
        self._check_lease()
        self.measured = asdict(measured)
        if not service.record_measured(self.claimed.id, self.owner, self.lease_s, self.measured):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost before measuring was recorded")

    def _row(self, point: CheckpointPoint) -> dict[str, Any]:
        assert self.measured is not None, "on_measured comes before any checkpoint"
        return service.observation_row(
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
        if not service.record_resume(self.claimed, self.owner, self.lease_s, tokens_done, rows):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost while resuming")

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        """Throttled progress write (also a lease renewal)."""
        self._check_lease()
        self.tokens_total = int(tokens_total)
        now = time.monotonic()
        progress = self._progress(tokens_done, tokens_total)
        if now - self._last_write < self._write_every_s and tokens_done < tokens_total:
            return
        self._last_write = now
        if not service.heartbeat(self.claimed.id, self.owner, self.lease_s, **progress):
            raise LeaseLostError(f"job {self.claimed.id}: lease lost")

    def on_checkpoint(
        self, point: CheckpointPoint, points: list[CheckpointPoint]
    ) -> tuple[Decision, str | None]:
        """Record the point; CANCEL when asked to, STOP when the stop rule says so."""
        from workers.ml.pipeline import Decision

        self._check_lease()
        warning = None
        if point.below_l0:
            warning = (
                "checkpoint losses fell below L0 beyond the evaluation noise (the dense model "
                "looks under-trained, p2-law.md §3); those observations are excluded from fits"
            )
        total = max(self.tokens_total, int(point.tokens))
        state = service.record_checkpoint(
            self.claimed,
            self.owner,
            self.lease_s,
            row=self._row(point),
            progress={"tokens_done": int(point.tokens), "tokens_total": total},
            warning=warning,
        )
        if not state.lease_held:
            raise LeaseLostError(f"job {self.claimed.id}: lease lost at a checkpoint")
        if state.cancel_requested:
            return Decision.CANCEL, "cancel requested"
        if self.stop_rule:
            assert self.measured is not None
            run = [
                RunPoint(
                    self.claimed.id,
                    float(self.measured["n0"]),
                    float(self.measured["rho"]),
                    float(self.measured["l0"]),
                    float(p.tokens),
                    float(p.loss),
                )
                for p in points
                if not p.below_l0
            ]
            decision = service.check_stop_rule(
                self.claimed, self.stop_rule, run, str(self.measured.get("protocol", ""))
            )
            if decision.stop:
                self.stopped_at = int(point.tokens)
                return Decision.STOP, decision.reason
        return Decision.CONTINUE, None


def _device_and_dtype(request: dict[str, Any]) -> tuple[str, str]:
    import torch

    device = request.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = request.get("dtype", "auto")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def build_spec(request: dict[str, Any]) -> JobSpec:
    """The pipeline's JobSpec from a stored request; paths are resolved inside their roots again
    (the roots or the files may have changed since submission)."""
    from workers.ml.pipeline import DatasetSpec, JobSpec

    paths = service.resolve_paths(request)
    dataset = request["dataset"]
    device, dtype = _device_and_dtype(request)
    return JobSpec(
        model=paths.model,
        method=request["method"],
        rho=float(request["rho"]),
        tokens=int(request["tokens"]),
        dataset=DatasetSpec(
            path=paths.dataset,
            text_field=dataset.get("text_field", "text"),
            eval_path=paths.eval_path,
            eval_tokens=dataset.get("eval_tokens"),
        ),
        checkpoints=int(request.get("checkpoints", 12)),
        seq_len=int(request.get("seq_len", 128)),
        batch_size=int(request.get("batch_size", 8)),
        grad_accum=int(request.get("grad_accum", 1)),
        lr=float(request.get("lr", 3e-4)),
        schedule=str(request.get("schedule", "constant")),
        warmup_frac=float(request.get("warmup_frac", 0.02)),
        weight_decay=float(request.get("weight_decay", 0.0)),
        seed=int(request.get("seed", 0)),
        calib_samples=int(request.get("calib_samples", 32)),
        device=device,
        dtype=dtype,
    )


def job_dirs(job_id: str) -> tuple[Path, Path]:
    """(workdir with the resumable training state, artifact directory) of a job."""
    root = Path(get_settings().artifact_root)
    return root / "_work" / job_id, root / job_id


def execute_job(job_id: str) -> str:
    """Claim and run one job to its end; returns what happened (for logs and tests)."""
    settings = get_settings()
    lease_s = settings.job_lease_s
    owner = lease_owner()
    claimed = service.claim(job_id, owner, lease_s)
    if claimed is None:
        return "not claimed"
    with Heartbeat(job_id, owner, lease_s) as beat:
        return _run_claimed(claimed, owner, lease_s, beat)


def _run_claimed(claimed: service.Claimed, owner: str, lease_s: float, beat: Heartbeat) -> str:
    job_id = claimed.id
    workdir, artifact_dir = job_dirs(job_id)
    try:
        import torch

        from workers.ml.pipeline import run_pipeline

        # On CPU, half the cores (at most 4): the API and the database share the machine, and
        # tiny models gain nothing from more threads.
        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
        spec = build_spec(claimed.request)
        hooks = DbHooks(claimed, owner, lease_s, beat)
        outcome = run_pipeline(spec, workdir=workdir, artifact_dir=artifact_dir, hooks=hooks)
    except LeaseLostError as exc:
        log.warning("%s; leaving the job to its new owner", exc)
        return "lease lost"
    except SoftTimeLimitExceeded:
        service.finish(job_id, owner, "failed", error="the attempt hit the soft time limit")
        return "failed"
    except SQLAlchemyError:
        # The database is unreachable: nothing can be recorded now. The lease expires and the
        # reaper sends the job again, which resumes from its last checkpoint.
        raise
    except Exception as exc:
        # Everything else is a property of the job (bad spec, 2:4 above its maximum, unreadable
        # data, out of memory): a retry would fail the same way, so it fails now, with the message.
        message = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        service.finish(job_id, owner, "failed", error=str(message)[:4000])
        return "failed"
    if outcome.status == "cancelled":
        service.finish(job_id, owner, "cancelled", error=None, eta_s=None)
        shutil.rmtree(workdir, ignore_errors=True)
        return "cancelled"
    stopped = outcome.status == "stopped_early"
    last_tokens = outcome.points[-1].tokens if outcome.points else 0
    # Refit before the job reads "succeeded", so a client that sees it finished sees the fit.
    if claimed.request.get("refit"):
        service.refit(job_id, claimed.family, claimed.method)
    done = service.finish(
        job_id,
        owner,
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
    report = asdict(service.reap())
    report["pruned_messages"] = queue.prune_delivered()
    return report
