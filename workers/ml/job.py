"""What a prune -> post-train job is and what it reports: pure types, no torch.

The worker's parent process (claim, heartbeat, database hooks, the group launcher) and every
training rank share these, so this module imports neither torch nor the Celery app.

:class:`JobSpec` is the one typed spec from the route to the rank: the validated request as the
API stored it (``app.schemas.jobs.JobRequest``, where every default of a job lives), the paths
resolved inside their roots, and what the machine that runs it decided (device, dtype). It
reaches each rank as its own JSON (``model_dump_json`` / ``model_validate_json``), so a new
training option is one field of ``JobRequest`` plus the line that uses it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest

#: Request fields that change no result of the job: a saved state stays valid across them.
_NOT_RESULTS = frozenset(
    {
        "family",
        "refit",
        "stop_rule",
        "idempotency_key",
        "device",
        "dtype",
        "dry_run",
        "device_memory_gib",
    }
)


class PipelineError(RuntimeError):
    """The job cannot run as specified (bad spec, foreign state in the workdir)."""


class JobSpec(BaseModel):
    """Everything that determines a job's results (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: JobRequest
    model: str  # resolved: a directory inside MODEL_ROOT (or a hub id where allowed)
    dataset: Path
    eval_path: Path | None
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16"]
    #: False only for a study's dense control: the same job with the pruning step left out.
    prune: bool = True

    @classmethod
    def build(cls, request: JobRequest, paths: JobPaths, *, cuda: bool) -> JobSpec:
        """The spec of a validated request whose paths were resolved inside their roots; ``auto``
        device and dtype are decided by the machine that runs the job (``cuda``: it has a GPU)."""
        device = request.device if request.device != "auto" else ("cuda" if cuda else "cpu")
        dtype = request.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device == "cuda" else "float32"
        return cls(
            request=request,
            model=paths.model,
            dataset=paths.dataset,
            eval_path=paths.eval_path,
            device=device,
            dtype=dtype,
        )

    @property
    def devices(self) -> int:
        return self.request.devices

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all data-parallel processes."""
        r = self.request
        return r.batch_size * r.grad_accum * r.seq_len * r.devices

    @property
    def total_steps(self) -> int:
        return max(1, round(int(self.request.tokens) / self.tokens_per_step))

    def resume_key(self) -> dict[str, Any]:
        """What a saved state must agree with to be resumed, as JSON reads it back (a retry may
        run on another device or dtype, under another family label or stop rule)."""
        key: dict[str, Any] = self.model_dump(
            mode="json", exclude={"device": True, "dtype": True, "request": set(_NOT_RESULTS)}
        )
        if key["request"]["recipe"] == {"kind": "full"}:
            # The default recipe leaves the key as it was before recipes existed, so a state
            # saved by that version still resumes.
            del key["request"]["recipe"]
        return key


@dataclass(frozen=True)
class Measured:
    """What is known once the model is pruned, before any post-training."""

    n0: int
    n_after: int
    rho: float
    l0: float
    loss_after_prune: float
    protocol: str
    eval_noise: float
    schedule: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointPoint:
    """One held-out loss after `tokens` post-training tokens."""

    tokens: int
    loss: float
    below_l0: bool
    note: str | None


class Decision(enum.Enum):
    """The caller's answer at a checkpoint; STOP is the law-guided early stop."""

    CONTINUE = "continue"
    STOP = "stop"
    CANCEL = "cancel"


class JobHooks(Protocol):
    """Callbacks from the pipeline to the job runner (on the main process only)."""

    def on_measured(self, measured: Measured) -> None:
        """Once per attempt, also after a resume (from the saved state)."""

    def on_resume(self, tokens_done: int, points: list[CheckpointPoint]) -> None:
        """The attempt resumed from a complete saved state at `tokens_done`."""

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        """Every few optimizer steps; must be cheap."""

    def on_checkpoint(
        self, point: CheckpointPoint, points: list[CheckpointPoint]
    ) -> tuple[Decision, str | None]:
        """After the checkpoint's state is saved; returns the decision and a reason."""


#: ``requeued``: the attempt reached its time limit, saved, and the job goes on in a later one.
JobStatus = Literal["succeeded", "stopped_early", "cancelled", "requeued"]


@dataclass(frozen=True)
class JobOutcome:
    """How the job ended."""

    status: JobStatus
    measured: Measured
    points: list[CheckpointPoint]
    artifact: Path | None
    reason: str | None


#: JSON for the types above (a saved state's record, a group's outcome): no hand rebuild.
MEASURED = TypeAdapter(Measured)
POINTS = TypeAdapter(list[CheckpointPoint])
OUTCOME = TypeAdapter(JobOutcome)


def checkpoint_steps(total_steps: int, checkpoints: int) -> list[int]:
    """Log-spaced optimizer steps ending at `total_steps`, unique and increasing.

    The first is ~total/1000 (at least one step), so a dozen points cover three decades of
    tokens, which is the range over which the law's D term is identifiable.
    """
    if total_steps < 1 or checkpoints < 1:
        raise PipelineError("a job needs at least one optimizer step and one checkpoint")
    if checkpoints == 1:
        return [total_steps]
    first = max(1, round(total_steps / 1000))
    ratio = (total_steps / first) ** (1.0 / (checkpoints - 1))
    steps = {min(total_steps, max(1, round(first * ratio**i))) for i in range(checkpoints)}
    steps.add(total_steps)
    return sorted(steps)


def below_l0(loss: float, measured: Measured) -> tuple[bool, str | None]:
    """Whether a checkpoint loss violates the law's premise L >= L0 beyond evaluation noise."""
    noise = measured.eval_noise if math.isfinite(measured.eval_noise) else 0.0
    if loss < measured.l0 - 2.0 * noise:
        return True, (
            f"loss {loss:.4f} < L0 {measured.l0:.4f} - 2x eval noise {noise:.4f}: post-training "
            "improves on the dense model, so it was not converged (docs/law.md §3)"
        )
    return False, None
