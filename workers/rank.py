"""One rank of a multi-device job: ``python -m workers.rank`` under ``torchrun``.

Started by ``workers.launch.launch_group``: it reads the spec the launcher wrote; rank 0
prepares the job (or finds its state) while the others wait on the file system; then every rank
joins ``torch.distributed`` (NCCL on GPUs, gloo on CPU; the collective timeout is
``DIST_TIMEOUT_S``) and runs the job's one training loop with the sharded strategy. Rank 0
writes to the database through the task's lease and reports the outcome in the work directory.
A rank that raised for a reason of the job's own writes it (``fatal-rank<r>.json``: a relaunch
would fail the same way); a rank that only saw a peer go away writes nothing, and the launcher
relaunches the group. A rank never builds the Celery app.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from app.services import job_lease
from workers.launch import read_spec, write_fatal, write_outcome
from workers.lease import DbHooks, LeaseLostError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of a multi-device job")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--artifact-dir", type=Path, required=True)
    parser.add_argument("--lease", nargs=3, metavar=("JOB_ID", "OWNER", "SECONDS"), required=True)
    parser.add_argument("--task-pid", type=int, required=True)
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="seconds this launch may train (0: no limit)"
    )
    args = parser.parse_args(argv)
    exit_with(args.task_pid)

    import torch
    import torch.distributed as dist

    from app.core.config import get_settings
    from workers.ml import pipeline
    from workers.ml.strategy import Sharded

    spec = read_spec(args.spec)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if spec.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    (args.workdir / f"rank-{rank}.pid").write_text(str(os.getpid()))
    settings = get_settings()
    try:
        hooks = rank0_hooks(*args.lease) if rank == 0 else None
        # What one process does alone (tokenise, load, L0, prune, the step-0 state) happens
        # before the group exists: the others wait for its state on the file system, not inside
        # a collective with a timeout.
        resumed = True
        if rank == 0:
            resumed = pipeline.prepare_once(spec, args.workdir, hooks, device)
        else:
            pipeline.wait_for_state(args.workdir)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=settings.dist_timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
        deadline = args.deadline if args.deadline > 0 else None
        outcome = pipeline.post_train(
            spec,
            workdir=args.workdir,
            artifact_dir=args.artifact_dir,
            hooks=hooks,
            strategy=Sharded(spec),
            resumed=resumed,
            deadline=None if deadline is None else time.monotonic() + deadline,
        )
        if rank == 0:
            write_outcome(args.workdir, outcome)
    except Exception as exc:
        if not isinstance(exc, LeaseLostError) and not lost_peer(exc):
            message = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            write_fatal(args.workdir, rank, str(message)[:4000])
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def exit_with(task_pid: int) -> None:
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


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank went away (so this one is not the cause): NCCL and the
    store raise ``DistError``s; gloo raises a plain RuntimeError naming its transport."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("gloo/transport" in text or "Connection" in text)


def rank0_hooks(job_id: str, owner: str, seconds: str) -> DbHooks:
    """The task's database hooks, under the lease the task holds (rank 0 only)."""
    claimed = job_lease.held(job_id, owner, float(seconds))
    if claimed is None:
        raise LeaseLostError(f"job {job_id}: the lease is no longer {owner}'s")
    return DbHooks(claimed, threading.Event())


def leave(code: int) -> None:
    """End the process without the interpreter's teardown: the job's files are written and its
    group destroyed, but objects that outlive ``destroy_process_group`` (a device mesh holds its
    group) would run gloo's and NCCL's destructors during interpreter shutdown, where a worker
    thread still joinable aborts the process (SIGABRT, "terminate called without an active
    exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
