"""Run a job on several devices: the worker launches ``torchrun``, each rank runs the job.

A prefork Celery child cannot fork training processes of its own, so the task starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m workers.launch ...`` as a
subprocess and waits for it. Each rank initialises ``torch.distributed`` (NCCL on GPUs, gloo on
CPU) and runs ``workers.ml.sharded.run_sharded``; rank 0 also builds the job's database hooks
under the *same* lease the task holds (the task's heartbeat thread keeps renewing it), so the
lease, progress, cancel, the early stop and exactly-once observations behave as on one device.

The task watches the subprocess: a lost lease stops it; a rank that raised writes its error
(``fatal-rank<r>.json``) and the job fails with that message, since a relaunch would fail the
same way; a rank killed from outside (``kill -9``, the out-of-memory killer) leaves no error, and
the group is launched again, resuming from its last complete sharded checkpoint, up to
``restarts`` times. Rank logs go to ``rank-logs/`` in the job's work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.ml.pipeline import JobOutcome, JobSpec
    from workers.tasks import DbHooks

#: Relaunches of a group whose rank was killed from outside, within one attempt.
RESTARTS = 2
SPEC_FILE = "spec.json"
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
    """The spec as JSON for the ranks (paths as strings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / SPEC_FILE
    path.write_text(json.dumps(asdict(spec), default=str))
    return path


def read_spec(path: Path) -> JobSpec:
    """The spec :func:`write_spec` wrote."""
    from workers.ml.pipeline import DatasetSpec, JobSpec

    data = json.loads(path.read_text())
    dataset = data.pop("dataset")
    eval_path = dataset["eval_path"]
    return JobSpec(
        **data,
        dataset=DatasetSpec(
            path=Path(dataset["path"]),
            text_field=dataset["text_field"],
            eval_path=Path(eval_path) if eval_path else None,
            eval_tokens=dataset["eval_tokens"],
        ),
    )


def _command(spec: JobSpec, workdir: Path, artifact_dir: Path, lease: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={spec.devices}",
        "--max-restarts=0",
        "--log-dir",
        str(workdir / "rank-logs"),
        "--redirects=3",
        "-m",
        "workers.launch",
        "--spec",
        str(workdir / SPEC_FILE),
        "--workdir",
        str(workdir),
        "--artifact-dir",
        str(artifact_dir),
        "--lease",
        *lease,
        "--task-pid",
        str(os.getpid()),
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


def run_on_devices(
    spec: JobSpec,
    *,
    workdir: Path,
    artifact_dir: Path,
    job_id: str,
    owner: str,
    lease_s: float,
    lease_lost: threading.Event,
    restarts: int = RESTARTS,
) -> JobOutcome:
    """Run the job on ``spec.devices`` processes and return how it ended (see the docstring).

    Raises:
        GroupFailedError: a rank raised (its message), or the relaunches are used up.
        InterruptedError: the lease was lost; the processes were stopped.
    """
    from workers.ml.sharded import OUTCOME_FILE, read_outcome

    write_spec(spec, workdir)
    (workdir / OUTCOME_FILE).unlink(missing_ok=True)
    lease = [job_id, owner, repr(lease_s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_rank(spec))}
    for launch in range(restarts + 1):
        for stale in workdir.glob(f"{FATAL_PREFIX}*.json"):
            stale.unlink()
        process = subprocess.Popen(
            _command(spec, workdir, artifact_dir, lease),
            env=env,
            start_new_session=True,  # one process group: torchrun and every rank stop together
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while process.poll() is None:
                if lease_lost.wait(0.5):
                    _stop(process)
                    raise InterruptedError(f"job {job_id}: the lease was taken over")
        finally:
            if process.poll() is None:
                _stop(process)
        outcome = read_outcome(workdir)
        if process.returncode == 0 and outcome is not None:
            return outcome
        fatal = _fatal(workdir)
        if fatal is not None:
            raise GroupFailedError(fatal)
        if launch < restarts:
            time.sleep(1.0)
    raise GroupFailedError(
        f"the {spec.devices} training processes stopped without a result {restarts + 1} times "
        f"(killed, or out of memory); see {workdir / 'rank-logs'}"
    )


def _threads_per_rank(spec: JobSpec) -> int:
    if spec.device == "cuda":
        return 4
    return max(1, (os.cpu_count() or 1) // spec.devices)


# --------------------------------------------------------------------------- inside each rank


def _rank_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of a multi-device job")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--artifact-dir", type=Path, required=True)
    parser.add_argument("--lease", nargs=3, metavar=("JOB_ID", "OWNER", "SECONDS"), required=True)
    parser.add_argument("--task-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _exit_with(args.task_pid)

    import torch
    import torch.distributed as dist

    from workers.ml.sharded import run_sharded

    spec = read_spec(args.spec)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(backend="nccl" if spec.device == "cuda" else "gloo")
    rank = dist.get_rank()
    (args.workdir / f"rank-{rank}.pid").write_text(str(os.getpid()))
    try:
        hooks = _rank0_hooks(*args.lease) if rank == 0 else None
        run_sharded(spec, workdir=args.workdir, artifact_dir=args.artifact_dir, hooks=hooks)
    except Exception as exc:
        message = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ != "LeaseLostError" and not _lost_peer(exc):
            error = {"rank": rank, "error": str(message)[:4000]}
            (args.workdir / f"{FATAL_PREFIX}{rank}.json").write_text(json.dumps(error))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _exit_with(task_pid: int) -> None:
    """End this rank when the task that launched the group is gone (a worker killed by its hard
    time limit, say): the group would otherwise train on, unsupervised, in a session of its own."""

    def watch() -> None:
        while True:
            time.sleep(2.0)
            try:
                os.kill(task_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                continue

    threading.Thread(target=watch, name="task-watch", daemon=True).start()


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank went away (so this one is not the cause): NCCL and the
    store raise ``DistError``s; gloo raises a plain RuntimeError naming its transport."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("gloo/transport" in text or "Connection" in text)


def _rank0_hooks(job_id: str, owner: str, seconds: str) -> DbHooks:
    """The task's database hooks, under the lease the task holds (rank 0 only)."""
    from app.services import job_lease
    from workers.tasks import DbHooks, LeaseLostError

    claimed = job_lease.held(job_id, owner, float(seconds))
    if claimed is None:
        raise LeaseLostError(f"job {job_id}: the lease is no longer {owner}'s")
    return DbHooks(claimed, threading.Event())


if __name__ == "__main__":
    raise SystemExit(_rank_main())
