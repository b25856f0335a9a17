"""This process's host memory, read from Linux's ``/proc/self/status``: the resident set now
(``VmRSS``) and its high-water mark (``VmHWM``), which can be reset (writing ``5`` to
``/proc/self/clear_refs``, Linux 4.0 and later) so that a peak belongs to one phase of a job.

A job records, per rank, the peak over loading its training state (``host-memory-rank<r>.json``
in its work directory, :func:`write_load_report`) beside the bytes of the loaded tensors whole
and in this rank's shards. A sharded load builds the model on the meta device and reads only its
shards, so its peak should follow the shard, not the whole model (docs/scaling.md, "Host memory
of a sharded load").

The reset is the kernel's one mark for the process: ``ru_maxrss`` (``getrusage``, a parent's
``wait4``, Celery's ``worker_max_memory_per_child``) forgets every earlier peak with it. So only
a process that is the job's own (a rank of a group) resets it; elsewhere, and where the kernel
refuses, the peak is the process's since it started, and the report says so. Where ``/proc`` is
missing (not Linux) the readings are None.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from app.core import atomic

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
REPORT_PREFIX = "host-memory-rank"


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None where there is none."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(found.group(1)) * 1024 if found else None


def resident_bytes() -> int | None:
    """This process's resident set now (``VmRSS``)."""
    return _status_bytes("VmRSS")


def peak_bytes() -> int | None:
    """The largest resident set since the process started or the last :func:`reset_peak`."""
    return _status_bytes("VmHWM")


def reset_peak() -> bool:
    """Set the high-water mark to the resident set now; whether the kernel allowed it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def trim_heap() -> bool:
    """Give the C allocator's free memory back to the system (glibc's ``malloc_trim``), so that
    a phase starts from what the process holds, not from what it freed and kept (rank 0 keeps
    some of the preparation's heap); whether there was such a call (not on other C libraries)."""
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return False
    if trim is None:
        return False
    trim(0)
    return True


@dataclass
class Window:
    """Host memory over one phase; the fields after ``peak_since`` are filled in as it ends."""

    rss_before_bytes: int | None
    #: "phase" when the mark was reset at its start; "process start" when it could not be.
    peak_since: Literal["phase", "process start"]
    peak_bytes: int | None = None
    rss_after_bytes: int | None = None
    seconds: float = 0.0

    @property
    def growth_bytes(self) -> int | None:
        """How far the phase took the resident set above where it began."""
        if self.peak_bytes is None or self.rss_before_bytes is None:
            return None
        return self.peak_bytes - self.rss_before_bytes


@contextmanager
def watch(*, reset: bool) -> Iterator[Window]:
    """Measure the peak resident set of the block it wraps: from its start when ``reset`` (and
    the kernel allows it; see the module docstring), else since the process started."""
    started = time.monotonic()
    trim_heap()
    since: Literal["phase", "process start"] = "process start"
    if reset and reset_peak():
        since = "phase"
    window = Window(resident_bytes(), since)
    try:
        yield window
    finally:
        window.peak_bytes = peak_bytes()
        window.rss_after_bytes = resident_bytes()
        window.seconds = time.monotonic() - started


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(bytes of the tensors whole, bytes this process holds of them): a DTensor counts its
    global shape whole and its local shard here; a tensor met twice (tied weights) counts once."""
    seen: set[int] = set()
    whole = local = 0
    for tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = tensor.element_size()
        whole += tensor.numel() * size
        here = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        local += here.numel() * size
    return whole, local


def write_load_report(
    workdir: Path,
    window: Window,
    *,
    rank: int,
    world: int,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    masks: dict[str, torch.Tensor],
) -> Path:
    """``host-memory-rank<rank>.json``: this rank's peak over loading the state of ``step``, and
    what the load holds: the model's fp32 weights whole (the yardstick: what a rank that loads
    the whole model would hold at least), and the loaded weights, AdamW moments (a state after
    step 0) and masks, whole and in this rank's shards."""
    parameters = list(model.parameters())
    moments = [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    ]
    whole, shard = tensor_bytes([*parameters, *moments, *masks.values()])
    report = {
        "rank": rank,
        "world": world,
        "phase": "load",
        "step": step,
        **asdict(window),
        "growth_bytes": window.growth_bytes,
        "model_fp32_bytes": 4 * sum(p.numel() for p in parameters),
        "loaded_whole_bytes": whole,
        "loaded_shard_bytes": shard,
    }
    return atomic.write_json(workdir / f"{REPORT_PREFIX}{rank}.json", report)
