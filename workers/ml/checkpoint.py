"""A job's training state: one format for one device and many, written atomically, read without
pickle.

A state is a folder ``state-<step>`` in the job's work directory:

- ``dcp/``: the tensors, written by ``torch.distributed.checkpoint`` (DCP), the format
  torchtitan and torchtune use: the model's weights, the optimizer's moments, the pruning
  masks and the torch RNG states, each under its fully qualified name. Each process writes its
  own shards (one process: the whole tensors), and DCP reads them back into whatever layout the
  reader has, so a state written by one process loads into N sharded ones and back;
- ``model/``: the pruned model's ``config.json`` and the tokenizer (no weights), to build the
  model before its weights are loaded;
- ``meta.json``: the format, the spec's resume key, the step, the data position, the measured
  values and the checkpoint losses so far;
- ``COMPLETE``: written last. The folder is built under a temporary name and renamed into place
  first, so a crash at any moment leaves the previous complete state or this one.

DCP stores its index (``.metadata``) as a pickle, and ``pickle.load`` runs whatever code a file
names: a file planted in the work directory would run in the worker. :class:`SafeReader` reads
the index with an unpickler that builds only DCP's own metadata classes, torch sizes, dtypes and
layouts, and refuses anything else before it runs; the tensor files are read by DCP with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import queue
import random
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from app.core import atomic
from workers.ml import faults
from workers.ml.job import CheckpointPoint, Measured

STATE_PREFIX = "state-"
COMPLETE = "COMPLETE"
#: 3: DCP tensors + JSON (the same for any device count); 2 and 1 were per-device formats.
STATE_FORMAT = 3


class StateRecord(BaseModel):
    """``meta.json``: everything of a state that is not a tensor."""

    model_config = ConfigDict(extra="forbid")

    format: int
    resume_key: dict[str, Any]
    step: int
    tokens_done: int
    stream: dict[str, int] | None  # None at step 0: the trainer's stream starts fresh
    rng_python: list[Any] | None  # None at step 0: the trainer seeds its RNG itself
    mask_names: list[str]
    measured: Measured
    points: list[CheckpointPoint]


# --------------------------------------------------------------------------- reading safely

_DCP_MODULES = ("torch.distributed.checkpoint.",)
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes and torch's plain value types; refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or module.startswith(_DCP_MODULES):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"a checkpoint index may not build {module}.{name}")


class SafeReader(FileSystemReader):
    """DCP's file reader with the index read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / ".metadata", "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{self.path} holds no checkpoint index")
        storage = metadata.storage_meta or StorageMeta()
        storage.load_id = getattr(self, "load_id", None)
        metadata.storage_meta = storage
        return metadata


# --------------------------------------------------------------------------- finding states


def _state_dirs(workdir: Path) -> list[tuple[int, Path]]:
    found = []
    for child in workdir.glob(f"{STATE_PREFIX}*"):
        suffix = child.name[len(STATE_PREFIX) :]
        if child.is_dir() and suffix.isdigit():
            found.append((int(suffix), child))
    return sorted(found)


def read_record(state: Path) -> StateRecord | None:
    """A state's ``meta.json``, or None when it is of another format or unreadable."""
    try:
        raw = json.loads((state / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        return None
    return StateRecord.model_validate(raw)


def latest_complete_state(workdir: Path) -> Path | None:
    """The newest state whose COMPLETE marker exists and whose format this version reads;
    half-written states and states of an older format are ignored (the job starts over)."""
    if not workdir.is_dir():
        return None
    for _step, path in reversed(_state_dirs(workdir)):
        if (path / COMPLETE).is_file() and read_record(path) is not None:
            return path
    return None


def clean_workdir(workdir: Path, keep: Path | None, *, pending: str | None = None) -> None:
    """Remove temporary folders and every state but ``keep`` (and the temporary folders of the
    launch ``pending``, whose states are still being written)."""
    for child in workdir.iterdir():
        if child == keep or (pending is not None and child.name.endswith(f".tmp-{pending}")):
            continue
        if child.name.startswith(".") or child.name.startswith(STATE_PREFIX):
            shutil.rmtree(child, ignore_errors=True)


# --------------------------------------------------------------------------- RNG


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's RNG states (the same on every rank: each seeds alike)."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(tensors: dict[str, torch.Tensor], python: list[Any], device: torch.device) -> None:
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    version, internal, gauss = python
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- save and load


@dataclass(frozen=True)
class Collective:
    """Who writes what: every process writes its DCP shards; the main one writes the rest.

    ``run_id`` is the same in every process of one launch and new in the next, so the processes
    meet in one temporary folder without a barrier, and a crashed launch's folder is never
    reused. ``no_dist``: one process writes alone (a job's preparation, before its group
    starts), so DCP takes no collective.
    """

    is_main: bool
    run_id: str
    no_dist: bool


def tensor_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    masks: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """The DCP tree of a state: model, optimizer, masks and RNG, in this process's layout.

    Without an optimizer (the state of step 0, before any step) there are no moments to keep:
    DCP would otherwise make them by a zero step, which counts as a step in AdamW's bias
    correction and changes the run's first updates.
    """
    tree: dict[str, Any] = {"masks": masks, "rng": rng_tensors(device)}
    if optimizer is None:
        tree["model"] = get_model_state_dict(model)
    else:
        tree["model"], tree["optim"] = get_state_dict(model, optimizer)
    return tree


class Publisher:
    """Completes the main process's states in the background, in order.

    Publishing a state (its JSON and model files, the fsync of the folder, the rename, the
    COMPLETE marker, dropping the older state) is the main process's alone. Done inline, every
    other rank would wait for it inside its next collective; here one thread does it while
    training goes on. :meth:`drain` waits for everything queued (at the end of a job, and on
    any error, so only a killed process leaves a state unpublished — which resume ignores).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="state-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            try:
                if self._error is None:
                    task()
            except BaseException as exc:  # reported by the next submit or drain
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"publishing a training state failed: {self._error}") from (
                self._error
            )

    def submit(self, task: Callable[[], None]) -> None:
        self._raise()
        self._queue.put(task)

    def drain(self) -> None:
        """Wait for every queued publication; raise if one failed."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


def save_state(
    workdir: Path,
    *,
    tensors: dict[str, Any],
    record: StateRecord,
    write_model_files: Callable[[Path], None],
    writers: Collective,
    publisher: Publisher | None = None,
) -> Path:
    """Write a complete state ``state-<step>`` (see the module docstring); return its path.

    Every process of the group calls it. The main process publishes the state through
    ``publisher`` (in the background), or before returning when there is none.
    """
    final = workdir / f"{STATE_PREFIX}{record.step:012d}"
    tmp = workdir / f".{final.name}.tmp-{writers.run_id}"
    tmp.mkdir(parents=True, exist_ok=True)
    # The shards: DCP's own collectives order them and gather the index on the main process,
    # every process writing its part at the same time; nothing here waits on one process alone.
    with _alone_is_meant(writers.no_dist):
        dcp_save(tensors, checkpoint_id=str(tmp / "dcp"), no_dist=writers.no_dist)
    if writers.is_main:
        write_model_files(tmp / "model")
        payload = record.model_dump(mode="json")

        def publish() -> None:
            # The main process's alone, outside any collective: nothing reads this folder
            # before COMPLETE.
            faults.pause("save")
            atomic.write_json(tmp / "meta.json", payload)
            if final.exists():  # an incomplete state of the same step from a crashed attempt
                shutil.rmtree(final)
            atomic.publish_dir(tmp, final)
            atomic.write_text(final / COMPLETE, f"{record.step}\n")
            clean_workdir(workdir, keep=final, pending=writers.run_id)

        if publisher is None:
            publish()
        else:
            publisher.submit(publish)
    return final


def save_tensors(directory: Path, tensors: dict[str, Any], *, no_dist: bool) -> None:
    """Write a DCP tree into ``directory / "dcp"`` (every process of a group its shards; one
    process alone with ``no_dist``), to be read back by :func:`load_tensors`."""
    with _alone_is_meant(no_dist):
        dcp_save(tensors, checkpoint_id=str(directory / "dcp"), no_dist=no_dist)


def load_tensors(state: Path, template: dict[str, Any], *, no_dist: bool) -> dict[str, Any]:
    """Fill ``template`` (a :func:`tensor_state` tree of this process's layout) from ``state``.

    The index is read once here first, so a refused one raises ``pickle.UnpicklingError`` itself
    rather than DCP's wrapper of every rank's failure.
    """
    reader = SafeReader(str(state / "dcp"))
    reader.read_metadata()
    with _alone_is_meant(no_dist):
        dcp_load(template, storage_reader=reader, no_dist=no_dist)
    return template


@contextmanager
def _alone_is_meant(no_dist: bool) -> Iterator[None]:
    """DCP warns at every single-process save and load that it assumes one is meant; it is."""
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", "torch.distributed is .*single process")
        yield


def apply_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer, loaded: dict[str, Any]
) -> None:
    """Put loaded weights (and optimizer moments, when the state has them) into the possibly
    sharded model and optimizer."""
    if "optim" in loaded:
        set_state_dict(
            model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"]
        )
    else:
        set_model_state_dict(model, loaded["model"])
