"""One prune -> post-train job, top to bottom.

load model -> held-out L0 -> prune (calibration from the train split) -> loss after pruning ->
post-train, and at each log-spaced checkpoint: evaluate, save the whole training state
atomically, ask the caller whether to continue. A later attempt with the same `workdir`
resumes from the last complete state and reproduces the same data order.

The database never appears here: the caller (workers/tasks.py) turns the hooks' arguments
into observations, progress and job status.
"""

from __future__ import annotations

import enum
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml import data as data_mod
from workers.ml import models, safe_state, tokenized
from workers.ml.evaluate import eval_loss
from workers.ml.prune import apply_masks, prune
from workers.ml.train import TrainConfig, Trainer, describe_schedule

if TYPE_CHECKING:
    from app.core.paths import JobPaths
    from app.schemas.jobs import JobRequest

STATE_PREFIX = "state-"
TMP_PREFIX = ".tmp-"
COMPLETE = "COMPLETE"
#: 2: trainer and mask states as tensors (.pt, read with weights_only) + JSON; 1 pickled them.
STATE_FORMAT = 2

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PipelineError(RuntimeError):
    """The job cannot run as specified (bad spec, foreign state in the workdir)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where the job's text is; paths are already resolved inside DATA_ROOT by the caller."""

    path: Path
    text_field: str
    eval_path: Path | None
    eval_tokens: int | None  # None: data.default_eval_tokens(seq_len)


@dataclass(frozen=True)
class JobSpec:
    """Everything that determines a job's results.

    Built from a validated request by :meth:`from_request`; no field has a default here, since
    the defaults of a job are the request model's (``app.schemas.jobs.JobRequest``) and live
    there only.
    """

    model: str
    method: str  # "depth" | "width" | "2:4" | "unstructured"
    rho: float
    tokens: int
    dataset: DatasetSpec
    checkpoints: int
    seq_len: int
    batch_size: int
    grad_accum: int
    lr: float
    schedule: str
    warmup_frac: float
    weight_decay: float
    seed: int
    calib_samples: int
    device: str  # "cpu" | "cuda" (resolved)
    dtype: str  # "float32" | "bfloat16" (resolved)
    devices: int  # data-parallel processes (1: this process; more: workers/ml/sharded.py)
    activation_checkpointing: bool

    @classmethod
    def from_request(cls, request: JobRequest, paths: JobPaths) -> JobSpec:
        """The spec of a validated job request whose paths were resolved inside their roots;
        ``auto`` device and dtype are decided here, on the machine that runs the job."""
        device = request.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = request.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device == "cuda" else "float32"
        return cls(
            model=paths.model,
            method=request.method,
            rho=request.rho,
            tokens=int(request.tokens),
            dataset=DatasetSpec(
                path=paths.dataset,
                text_field=request.dataset.text_field,
                eval_path=paths.eval_path,
                eval_tokens=request.dataset.eval_tokens,
            ),
            checkpoints=request.checkpoints,
            seq_len=request.seq_len,
            batch_size=request.batch_size,
            grad_accum=request.grad_accum,
            lr=request.lr,
            schedule=request.schedule,
            warmup_frac=request.warmup_frac,
            weight_decay=request.weight_decay,
            seed=request.seed,
            calib_samples=request.calib_samples,
            device=device,
            dtype=dtype,
            devices=request.devices,
            activation_checkpointing=request.activation_checkpointing,
        )

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all data-parallel processes."""
        return self.batch_size * self.grad_accum * self.seq_len * self.devices

    @property
    def total_steps(self) -> int:
        return max(1, round(self.tokens / self.tokens_per_step))


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
    """Callbacks from the pipeline to the job runner."""

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


@dataclass(frozen=True)
class JobOutcome:
    """How the job ended."""

    status: str  # "succeeded" | "stopped_early" | "cancelled"
    measured: Measured
    points: list[CheckpointPoint]
    artifact: Path | None
    reason: str | None


# --------------------------------------------------------------------------- schedule


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


# --------------------------------------------------------------------------- atomic state


def _state_dirs(workdir: Path) -> list[tuple[int, Path]]:
    found = []
    for child in workdir.glob(f"{STATE_PREFIX}*"):
        suffix = child.name[len(STATE_PREFIX) :]
        if child.is_dir() and suffix.isdigit():
            found.append((int(suffix), child))
    return sorted(found)


def latest_complete_state(workdir: Path) -> Path | None:
    """The newest state directory whose COMPLETE marker exists; half-written ones are ignored."""
    if not workdir.is_dir():
        return None
    complete = [path for _step, path in _state_dirs(workdir) if (path / COMPLETE).is_file()]
    return complete[-1] if complete else None


def _state_format(state: Path) -> int | None:
    try:
        meta = json.loads((state / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    value = meta.get("format") if isinstance(meta, dict) else None
    return value if isinstance(value, int) else None


def _clean_workdir(workdir: Path, keep: Path | None, also: Path | None = None) -> None:
    """Remove temp dirs, incomplete states and every complete state but `keep` (and `also`)."""
    for child in workdir.iterdir():
        if child in (keep, also):
            continue
        if child.name.startswith(TMP_PREFIX) or child.name.startswith(STATE_PREFIX):
            shutil.rmtree(child, ignore_errors=True)


def _spec_key(spec: JobSpec) -> dict[str, Any]:
    """The spec fields a saved state must agree with to be resumed, as they read back from JSON
    (paths as strings, whether the caller passed `str` or `Path`)."""
    out = asdict(spec)
    for name in ("device", "dtype"):  # a retry may run on another device
        out.pop(name)
    normalised: dict[str, Any] = json.loads(json.dumps(out, default=str))
    return normalised


def _save_state(
    workdir: Path,
    *,
    spec: JobSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trainer: Trainer,
    masks: dict[str, torch.Tensor],
    measured: Measured,
    points: list[CheckpointPoint],
) -> Path:
    """Write the whole training state into workdir atomically and drop older states.

    Written into a temp dir, fsynced, renamed to `state-<step>`, then the COMPLETE marker is
    written and fsynced last: a crash at any moment leaves either the previous complete state
    or this one, never a half-written state that looks complete.
    """
    final = workdir / f"{STATE_PREFIX}{trainer.step:012d}"
    tmp = workdir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    models.save_pretrained(model, tokenizer, tmp / "model")
    safe_state.save(trainer.state_dict(), tmp, "trainer")
    safe_state.save(masks, tmp, "masks")
    meta = {
        "format": STATE_FORMAT,
        "spec": _spec_key(spec),
        "step": trainer.step,
        "tokens_done": trainer.tokens_done,
        "measured": asdict(measured),
        "points": [asdict(p) for p in points],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    models.fsync_tree(tmp)
    if final.exists():  # an incomplete state of the same step from a crashed attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    models.fsync_dir(workdir)
    with open(final / COMPLETE, "w") as fh:
        fh.write(f"{trainer.step}\n")
        fh.flush()
        os.fsync(fh.fileno())
    models.fsync_dir(final)
    _clean_workdir(workdir, keep=final)
    return final


# --------------------------------------------------------------------------- the job


def _resolve_dtypes(spec: JobSpec) -> tuple[torch.device, torch.dtype | None]:
    """Device, and the autocast dtype (weights and AdamW state stay float32 master copies)."""
    device = torch.device(spec.device)
    if spec.dtype not in _DTYPES:
        raise PipelineError(f"unknown dtype {spec.dtype!r} (one of {sorted(_DTYPES)})")
    compute = _DTYPES[spec.dtype]
    return device, (None if compute == torch.float32 else compute)


def _train_config(spec: JobSpec, total_steps: int) -> TrainConfig:
    return TrainConfig(
        lr=spec.lr,
        schedule=spec.schedule,
        warmup_steps=min(total_steps, round(spec.warmup_frac * total_steps)),
        total_steps=total_steps,
        weight_decay=spec.weight_decay,
        grad_accum=spec.grad_accum,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )


def load_model_and_data(
    spec: JobSpec, pruned: Path | None, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, tokenized.JobSplits]:
    """The job's model (the dense one, or the pruned one saved at ``pruned``), its tokenizer
    and the dataset's training and held-out splits."""
    model_source = str(pruned) if pruned is not None else spec.model
    # Weights stay float32 (master copies for AdamW); bf16 is the autocast compute dtype.
    # A relative name that is no directory is a hub id; resolved local paths are absolute.
    model, tokenizer = models.load_causal_lm(
        model_source,
        device=device,
        dtype=torch.float32,
        allow_hub=not Path(model_source).is_absolute() and not Path(model_source).is_dir(),
    )
    # Batches come from memory-mapped token shards (a token directory, or raw text tokenised
    # once into a cache keyed by the source and the dense model's tokenizer): host memory per
    # batch, not per corpus; raw text gets the blocks and protocol data.make_splits would give.
    splits = tokenized.job_splits(
        spec.dataset.path,
        tokenizer,
        spec.seq_len,
        model=spec.model,
        text_field=spec.dataset.text_field,
        eval_path=spec.dataset.eval_path,
        eval_tokens=spec.dataset.eval_tokens,
    )
    return model, tokenizer, splits


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them:
    activation memory falls from every layer's to about one layer's, for ~1/3 more compute."""
    model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )


def prune_and_measure(
    spec: JobSpec,
    model: PreTrainedModel,
    *,
    splits: tokenized.JobSplits,
    evaluate: Callable[[], tuple[float, float]],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[Measured, dict[str, torch.Tensor]]:
    """L0 on the held-out set, the pruning (calibrated on the training split), ρ measured from
    the model and the loss right after pruning; the keep-masks of mask methods."""
    l0, eval_noise = evaluate()
    calib = data_mod.calibration_ids(splits.train, spec.calib_samples, seed=spec.seed)
    result = prune(model, spec.method, spec.rho, calib, device=device, batch_size=spec.batch_size)
    loss_after, _ = evaluate()
    measured = Measured(
        n0=int(result.n0),
        n_after=int(result.n_after),
        rho=float(result.rho),
        l0=l0,
        loss_after_prune=loss_after,
        protocol=splits.protocol,
        eval_noise=eval_noise,
        schedule=describe_schedule(cfg),
        details=dict(result.details),
    )
    return measured, {k: v.to(device) for k, v in result.masks.items()}


def evaluator(
    model: PreTrainedModel,
    splits: tokenized.JobSplits,
    spec: JobSpec,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> Callable[[], tuple[float, float]]:
    """The held-out loss (and its standard error) of ``model`` as it is when called."""

    def evaluate() -> tuple[float, float]:
        return eval_loss(
            model,
            splits.eval,
            batch_size=max(1, spec.batch_size),
            device=device,
            autocast_dtype=autocast_dtype,
        )

    return evaluate


def start_fresh(
    spec: JobSpec,
    workdir: Path,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: tokenized.JobSplits,
    cfg: TrainConfig,
    device: torch.device,
    evaluate: Callable[[], tuple[float, float]],
    make_trainer: Callable[[dict[str, torch.Tensor]], Trainer],
    hooks: JobHooks | None,
) -> tuple[Measured, dict[str, torch.Tensor], Trainer]:
    """A job's first attempt up to training: L0, pruning and the measurements, a fresh trainer,
    and the complete state of step 0, which keeps the (possibly slow) pruning and L0 out of every
    retry. Used by the one-device pipeline and by rank 0 of a sharded job."""
    measured, masks = prune_and_measure(
        spec, model, splits=splits, evaluate=evaluate, cfg=cfg, device=device
    )
    trainer = make_trainer(masks)
    if hooks is not None:
        hooks.on_measured(measured)
    _save_state(
        workdir,
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        trainer=trainer,
        masks=masks,
        measured=measured,
        points=[],
    )
    return measured, masks, trainer


def run_pipeline(
    spec: JobSpec, *, workdir: Path, artifact_dir: Path, hooks: JobHooks
) -> JobOutcome:
    """Run (or resume) one prune -> post-train job; see the module docstring."""
    if spec.tokens < 1:
        raise PipelineError("tokens must be positive")
    if spec.devices != 1:
        raise PipelineError("a job on several devices runs through workers.ml.sharded")
    device, autocast_dtype = _resolve_dtypes(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    resume_from = latest_complete_state(workdir)
    if resume_from is not None and _state_format(resume_from) != STATE_FORMAT:
        # Written by a version that stored its state another way (format 1 pickled it): start
        # over rather than read it.
        resume_from = None
    _clean_workdir(workdir, keep=resume_from)

    # The tokenizer is the dense model's either way; a resumed model is the pruned one.
    model, tokenizer, splits = load_model_and_data(
        spec, resume_from / "model" if resume_from else None, device
    )
    if spec.activation_checkpointing:
        enable_activation_checkpointing(model)

    tokens_per_step, total_steps = spec.tokens_per_step, spec.total_steps
    cfg = _train_config(spec, total_steps)
    steps = checkpoint_steps(total_steps, spec.checkpoints)

    evaluate = evaluator(model, splits, spec, device, autocast_dtype)

    def make_trainer(masks: dict[str, torch.Tensor]) -> Trainer:
        return Trainer(
            model,
            splits.train,
            cfg,
            device=device,
            autocast_dtype=autocast_dtype,
            masks=masks,
            apply_masks=apply_masks,
        )

    def save_state(
        trainer: Trainer,
        masks: dict[str, torch.Tensor],
        measured: Measured,
        points: list[CheckpointPoint],
    ) -> None:
        _save_state(
            workdir,
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            trainer=trainer,
            masks=masks,
            measured=measured,
            points=points,
        )

    if resume_from is not None:
        meta = json.loads((resume_from / "meta.json").read_text())
        if meta["spec"] != _spec_key(spec):
            raise PipelineError(f"{resume_from} was saved by a different job spec; not resuming")
        measured = Measured(**meta["measured"])
        if measured.protocol != splits.protocol:
            raise PipelineError("the evaluation set changed since the saved state was written")
        points = [CheckpointPoint(**p) for p in meta["points"]]
        masks: dict[str, torch.Tensor] = {
            k: v.to(device) for k, v in safe_state.load(resume_from, "masks").items()
        }
        trainer = make_trainer(masks)
        trainer.load_state_dict(safe_state.load(resume_from, "trainer"))
        hooks.on_measured(measured)
        hooks.on_resume(trainer.tokens_done, list(points))
    else:
        measured, masks, trainer = start_fresh(
            spec,
            workdir,
            model=model,
            tokenizer=tokenizer,
            splits=splits,
            cfg=cfg,
            device=device,
            evaluate=evaluate,
            make_trainer=make_trainer,
            hooks=hooks,
        )
        points = []

    total_tokens = total_steps * tokens_per_step
    progress_every = max(1, min(50, total_steps // 200))

    def progress(step: int) -> None:
        hooks.on_progress(step * tokens_per_step, total_tokens)

    for target in steps:
        if target <= trainer.step:
            continue
        trainer.run(target, on_step=progress, every=progress_every)
        loss, _stderr = evaluate()
        flagged, note = below_l0(loss, measured)
        point = CheckpointPoint(tokens=trainer.tokens_done, loss=loss, below_l0=flagged, note=note)
        points.append(point)
        save_state(trainer, masks, measured, points)
        decision, reason = hooks.on_checkpoint(point, list(points))
        if decision is Decision.CANCEL:
            return JobOutcome("cancelled", measured, points, None, reason)
        if decision is Decision.STOP:
            artifact = models.save_pretrained(model, tokenizer, artifact_dir)
            return JobOutcome("stopped_early", measured, points, Path(artifact), reason)
    hooks.on_progress(trainer.tokens_done, total_tokens)
    artifact = models.save_pretrained(model, tokenizer, artifact_dir)
    return JobOutcome("succeeded", measured, points, Path(artifact), None)
