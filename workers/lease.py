"""A job attempt's hold on its row: the lease owner, the heartbeat, and the pipeline's hooks.

Every write goes through ``app.services.job_lease`` while this attempt holds the job's lease. A
background thread renews the lease (the heartbeat), so the lease means "this attempt's process is
alive" whatever phase the pipeline is in; it dies with the process, the lease expires and the
reaper sends the job again, which resumes from its last complete checkpoint.

Used by the worker's task process and by rank 0 of a multi-device job: it imports neither torch
nor the Celery app.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any

from app.services import job_lease
from app.services import stop_rule as stop_rule_service
from app.services.job_lease import Claimed, Lease
from app.services.stop_rule import RunPoint
from workers.ml.job import CheckpointPoint, Decision, Measured

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
