"""Launch a job on several devices: the worker starts ``torchrun``, each rank runs the job.

A prefork Celery child cannot fork training processes of its own, so the task starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m workers.rank ...`` as a
subprocess and waits for it. Each rank (``workers/rank.py``) initialises ``torch.distributed``
(NCCL on GPUs, gloo on CPU) and runs the job's one pipeline with the sharded strategy; rank 0
also builds the job's database hooks under the *same* lease the task holds (the task's heartbeat
thread keeps renewing it), so the lease, progress, cancel, the early stop and exactly-once
observations behave as on one device.

The task watches the subprocess: a lost lease stops it; a rank that raised writes its error
(``fatal-rank<r>.json``) and the job fails with that message, since a relaunch would fail the
same way; a rank killed from outside (``kill -9``, the out-of-memory killer) leaves no error, and
the group is launched again, resuming from its last complete sharded checkpoint, up to
``restarts`` times. Rank logs go to ``rank-logs/`` in the job's work directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.core import atomic
from app.services.job_lease import Lease
from workers.ml.job import OUTCOME, JobOutcome, JobSpec

#: Relaunches of a group whose rank was killed from outside, within one attempt.
RESTARTS = 2
SPEC_FILE = "spec.json"
#: Written by rank 0 when the job ends: the ``JobOutcome`` the launcher reports.
OUTCOME_FILE = "outcome.json"
FATAL_PREFIX = "fatal-rank"


class DevicesUnavailableError(RuntimeError):
    """The job asks for more devices than this worker has."""


class GroupFailedError(RuntimeError):
    """The training processes failed; the message says why."""


def available_devices(device: str, configured: int | None) -> int:
    """How many devices of this kind the worker may use: ``WORKER_DEVICES`` when set (capped by
    what exists for GPUs), else every visible GPU, or every CPU core for CPU processes."""
    if device == "cuda":
        import torch

        present = torch.cuda.device_count()
        return min(present, configured) if configured else present
    return configured or (os.cpu_count() or 1)


def devices_for(spec: JobSpec, configured: int | None, *, started: bool) -> int:
    """How many devices this worker gives the job: those it asks for; a job that has a saved
    state goes on with fewer when this worker has fewer (the most that split its global batch),
    since its state loads into any layout. A job not yet started must get all it asks for."""
    have = available_devices(spec.device, configured)
    if not started or have >= spec.devices:
        check_devices(spec, configured)
        return spec.devices
    global_batch = spec.request.batch_size * spec.devices
    return max(n for n in range(1, have + 1) if global_batch % n == 0)


def check_devices(spec: JobSpec, configured: int | None) -> None:
    """Raise :class:`DevicesUnavailableError` when the job asks for more than the worker has."""
    have = available_devices(spec.device, configured)
    if spec.devices > have:
        kind = ("GPU", "GPUs") if spec.device == "cuda" else ("CPU process", "CPU processes")
        raise DevicesUnavailableError(
            f"the job asks for devices={spec.devices} but this worker has {have} "
            f"{kind[have != 1]} (WORKER_DEVICES={configured or 'unset'}); submit it with fewer "
            "devices or run it on a worker that owns more"
        )


def write_spec(spec: JobSpec, workdir: Path) -> Path:
    """The spec as its own JSON, for the ranks."""
    return atomic.write_text(workdir / SPEC_FILE, spec.model_dump_json())


def read_spec(path: Path) -> JobSpec:
    """The spec :func:`write_spec` wrote."""
    return JobSpec.model_validate_json(path.read_text())


def write_outcome(workdir: Path, outcome: JobOutcome) -> None:
    """Rank 0's report of how the job ended, for the launcher."""
    atomic.write_bytes(workdir / OUTCOME_FILE, OUTCOME.dump_json(outcome))


def read_outcome(workdir: Path) -> JobOutcome | None:
    """The outcome rank 0 wrote, or None when the job did not get that far."""
    path = workdir / OUTCOME_FILE
    return OUTCOME.validate_json(path.read_bytes()) if path.is_file() else None


def write_fatal(workdir: Path, rank: int, message: str) -> None:
    """A rank's error that a relaunch would meet again (the job fails with it)."""
    atomic.write_json(workdir / f"{FATAL_PREFIX}{rank}.json", {"rank": rank, "error": message})


def _command(
    devices: int, workdir: Path, artifact_dir: Path, lease: Lease, deadline: float | None
) -> list[str]:
    seconds = 0.0 if deadline is None else max(1.0, deadline - time.monotonic())
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={devices}",
        "--max-restarts=0",
        "--log-dir",
        str(workdir / "rank-logs"),
        "--redirects=3",
        "-m",
        "workers.rank",
        "--spec",
        str(workdir / SPEC_FILE),
        "--workdir",
        str(workdir),
        "--artifact-dir",
        str(artifact_dir),
        "--lease",
        lease.job_id,
        lease.owner,
        repr(lease.seconds),
        "--task-pid",
        str(os.getpid()),
        "--deadline",
        repr(seconds),
    ]


def _fatal(workdir: Path) -> str | None:
    """The error a rank reported, if any (the lowest rank's)."""
    for path in sorted(workdir.glob(f"{FATAL_PREFIX}*.json")):
        try:
            return str(json.loads(path.read_text())["error"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the whole process group (torchrun and its ranks), politely first."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch_group(
    spec: JobSpec,
    *,
    devices: int,
    workdir: Path,
    artifact_dir: Path,
    lease: Lease,
    lease_lost: threading.Event,
    deadline: float | None = None,
    restarts: int = RESTARTS,
) -> JobOutcome:
    """Run the job on ``devices`` processes and return how it ended (see the docstring).

    Raises:
        GroupFailedError: a rank raised (its message), or the relaunches are used up.
        InterruptedError: the lease was lost; the processes were stopped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    write_spec(spec, workdir)
    (workdir / OUTCOME_FILE).unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_rank(spec, devices))}
    for launch in range(restarts + 1):
        for stale in workdir.glob(f"{FATAL_PREFIX}*.json"):
            stale.unlink()
        process = subprocess.Popen(
            _command(devices, workdir, artifact_dir, lease, deadline),
            env=env,
            start_new_session=True,  # one process group: torchrun and every rank stop together
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while process.poll() is None:
                if lease_lost.wait(0.5):
                    _stop(process)
                    raise InterruptedError(f"job {lease.job_id}: the lease was taken over")
        finally:
            if process.poll() is None:
                _stop(process)
        outcome = read_outcome(workdir)
        if outcome is not None:
            # Rank 0 writes it when the job's work is done: a rank that dies afterwards, in
            # the group's teardown, loses nothing and must not start the job over.
            return outcome
        fatal = _fatal(workdir)
        if fatal is not None:
            raise GroupFailedError(fatal)
        if launch < restarts:
            time.sleep(1.0)
    raise GroupFailedError(
        f"the {devices} training processes stopped without a result {restarts + 1} times "
        f"(killed, or out of memory); see {workdir / 'rank-logs'}"
    )


def _threads_per_rank(spec: JobSpec, devices: int) -> int:
    if spec.device == "cuda":
        return 4
    return max(1, (os.cpu_count() or 1) // devices)
