"""One prune -> post-train job, top to bottom, on one device or many.

prepare (one process): load the dense model -> held-out L0 -> prune (calibrated on the training
split) -> loss after pruning -> the complete state of step 0;
train (every process): build the pruned model from the newest complete state, place it by the
strategy (``workers.ml.strategy``: one device, or FSDP2 over a process group), load the state's
weights, optimizer moments and masks, then post-train, and at each log-spaced checkpoint:
evaluate, save the whole training state (``workers.ml.checkpoint``), ask the hooks whether to go
on; at the end (or an early stop) save the model as a normal HF directory. The job's recipe
(``workers.ml.recipes``) adds LoRA adapters in prepare and restore (on a 2:4 or unstructured
model they train and are measured with the masked update the export merges), or a frozen
teacher saved in prepare and the distillation loss of the Trainer.

A later attempt with the same ``workdir`` resumes from the last complete state, whatever number
of processes wrote it, and reproduces the same data order; the step-0 state keeps the (possibly
slow) loading, L0 and pruning out of every retry. The database never appears here: the caller
turns the hooks' arguments into observations, progress and job status, and only the main
process calls them, so a job's writes happen once whatever the number of devices.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.ml import checkpoint, faults, host_memory, models, recipes
from workers.ml import data as data_mod
from workers.ml.checkpoint import Collective, StateRecord
from workers.ml.job import (
    CheckpointPoint,
    Decision,
    JobHooks,
    JobOutcome,
    JobSpec,
    JobStatus,
    Measured,
    PipelineError,
    below_l0,
    checkpoint_steps,
)
from workers.ml.prune import apply_masks, prune
from workers.ml.strategy import OneDevice
from workers.ml.tokens.read import JobSplits
from workers.ml.tokens.read import job_splits as read_splits
from workers.ml.train import LossFn, TrainConfig, Trainer, describe_schedule, lm_loss


def train_config(spec: JobSpec) -> TrainConfig:
    """The Trainer's configuration of a job (the recipe: docs/jobs.md, "The training recipe");
    a wsd decay is at most the steps after the warm-up."""
    r, total = spec.request, spec.total_steps
    warmup = min(total, round(r.warmup_frac * total))
    decay = min(total - warmup, round(r.decay_frac * total)) if r.schedule == "wsd" else 0
    return TrainConfig(
        lr=r.lr,
        schedule=r.schedule,
        warmup_steps=warmup,
        total_steps=total,
        min_lr_ratio=r.min_lr_ratio,
        decay_steps=decay,
        weight_decay=r.weight_decay,
        grad_accum=r.grad_accum,
        batch_size=r.batch_size,
        grad_clip=r.grad_clip,
        seed=r.seed,
    )


def job_splits(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> JobSplits:
    """The job's training and held-out blocks, from memory-mapped token shards (a token
    directory, or raw text tokenised once into a cache keyed by the source and the dense model's
    tokenizer): host memory per batch, not per corpus."""
    dataset = spec.request.dataset
    return read_splits(
        spec.dataset,
        tokenizer,
        spec.request.seq_len,
        model=spec.model,
        text_field=dataset.text_field,
        eval_path=spec.eval_path,
        eval_tokens=dataset.eval_tokens,
    )


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them:
    activation memory falls from every layer's to about one layer's, for ~1/3 more compute."""
    model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )


# --------------------------------------------------------------------------- prepare


def prepare(spec: JobSpec, workdir: Path, hooks: JobHooks | None, device: torch.device) -> None:
    """L0, the pruning and the measurements, saved as the complete state of step 0.

    One process does it alone (no collective is entered), on ``device``.
    """
    alone = OneDevice(spec, device)
    # A relative name that is no directory is a hub id; resolved local paths are absolute.
    source = Path(spec.model)
    model, tokenizer = models.load_causal_lm(
        spec.model,
        device=device,
        dtype=torch.float32,  # fp32 master weights; bf16 is the compute dtype
        allow_hub=not source.is_absolute() and not source.is_dir(),
    )
    splits = job_splits(spec, tokenizer)
    r = spec.request
    batch = max(1, r.batch_size)
    l0, eval_noise = alone.held_out_loss(model, splits.eval, batch)
    if r.recipe.kind == "distill":
        # The teacher is the model L0 was just measured on, saved before pruning changes it.
        recipes.save_teacher(model, workdir)
    masks: dict[str, torch.Tensor] = {}
    if spec.prune:
        calib = data_mod.calibration_ids(splits.train, r.calib_samples, seed=r.seed)
        result = prune(model, r.method, r.rho, calib, device=device, batch_size=r.batch_size)
        n0, n_after, rho, details = result.n0, result.n_after, result.rho, dict(result.details)
        masks = result.masks
        loss_after, _ = alone.held_out_loss(model, splits.eval, batch)
    else:  # a dense control: the same job without its pruning step
        n0 = n_after = models.count_parameters(model)
        rho, details, loss_after = 0.0, {}, l0
    if r.recipe.kind == "lora":
        # Adapters from the job's seed (B = 0: the loss after pruning is the adapted model's
        # too), saved in the state of step 0 that every attempt starts from.
        torch.manual_seed(r.seed)
        recipes.inject_lora(model, r.recipe)
        masks = recipes.adapted_masks(model, masks)
    measured = Measured(
        n0=int(n0),
        n_after=int(n_after),
        rho=float(rho),
        l0=l0,
        loss_after_prune=loss_after,
        protocol=splits.protocol,
        eval_noise=eval_noise,
        schedule=describe_schedule(train_config(spec)),
        details=details,
    )
    if hooks is not None:
        hooks.on_measured(measured)
    record = StateRecord(
        format=checkpoint.STATE_FORMAT,
        resume_key=spec.resume_key(),
        step=0,
        tokens_done=0,
        stream=None,
        rng_python=None,
        mask_names=sorted(masks),
        measured=measured,
        points=[],
    )
    checkpoint.save_state(
        workdir,
        tensors=checkpoint.tensor_state(model, None, masks, device),
        record=record,
        write_model_files=lambda out: models.save_model_files(model, tokenizer, out),
        writers=Collective(is_main=True, run_id="prepare", no_dist=True),
    )


# --------------------------------------------------------------------------- train


@dataclass
class Restored:
    """A job ready to train: the placed model, its trainer and masks, and the saved record."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    splits: JobSplits
    trainer: Trainer
    masks: dict[str, torch.Tensor]
    record: StateRecord


def restore(spec: JobSpec, state: Path, strategy: OneDevice) -> Restored:
    """Build the model saved in ``state`` with its parameters on the meta device, place it by
    ``strategy`` (each rank materialises only its shard), and load the state into it: no
    process ever holds more of the model than its shard."""
    record = checkpoint.read_record(state)
    if record is None:
        raise PipelineError(f"{state} is no training state this version reads")
    if record.resume_key != spec.resume_key():
        raise PipelineError(f"{state} was saved by a different job spec; not resuming")
    tokenizer = models.load_tokenizer(state / "model")
    splits = job_splits(spec, tokenizer)
    if record.measured.protocol != splits.protocol:
        raise PipelineError("the evaluation set changed since the saved state was written")
    recipe = spec.request.recipe
    with models.parameters_on_meta():
        model = models.model_from_config(state / "model")
        if recipe.kind == "lora":  # the adapters are made as in prepare; the state fills them in
            recipes.inject_lora(model, recipe)
    if spec.request.activation_checkpointing:
        enable_activation_checkpointing(model)  # the student's only
    strategy.parallelize(model)
    loss_fn: LossFn = lm_loss
    if recipe.kind == "distill":
        teacher = recipes.load_teacher(state.parent, strategy)
        loss_fn = recipes.Distillation(teacher, temperature=recipe.temperature, alpha=recipe.alpha)
    params = dict(model.named_parameters())
    # Laid out like their parameters (DTensors when sharded); the state fills them in.
    masks = {name: torch.ones_like(params[name], dtype=torch.bool) for name in record.mask_names}
    # The global batch is the job's whatever the number of processes, so a state saved by N
    # processes continues on M: the same sequences per optimizer step, split M ways.
    cfg = replace(train_config(spec), batch_size=strategy.per_device_batch(spec))
    trainer = Trainer(
        model,
        splits.train,
        cfg,
        device=strategy.device,
        autocast_dtype=strategy.autocast_dtype,
        # LoRA's masked base weights are frozen and never move: nothing to re-apply each step.
        masks=None if recipe.kind == "lora" else masks,
        apply_masks=apply_masks,
        shard=strategy.data_shard,
        loss_fn=loss_fn,
    )
    started = record.step > 0
    template = checkpoint.tensor_state(
        model, trainer.optimizer if started else None, masks, strategy.device
    )
    if not started:
        template.pop("rng")  # a state of step 0 keeps no RNG: the trainer starts as a fresh one
    loaded = checkpoint.load_tensors(state, template, no_dist=strategy.world == 1)
    checkpoint.apply_tensors(model, trainer.optimizer, loaded)
    if recipe.kind == "lora":
        # On a masked model the adapters train and are measured with the update the export
        # merges, scale · (B @ A) ⊙ mask: what is measured is what is shipped.
        recipes.mask_adapters(model, masks)
    if started:
        assert record.stream is not None and record.rng_python is not None
        trainer.step = record.step
        trainer.stream.load_state_dict(record.stream)
        checkpoint.restore_rng(loaded["rng"], record.rng_python, strategy.device)
    return Restored(model, tokenizer, splits, trainer, masks, record)


def export(spec: JobSpec, job: Restored, strategy: OneDevice) -> nn.Module | None:
    """The model to save as the job's artifact, whole, on the main process (None elsewhere);
    collective. A LoRA job's is a plain model of the pruned size with its adapters merged, each
    delta multiplied by its weight's keep-mask (gathered whole, mask by mask, on the main
    process: 1 byte a weight, 7 GB at 8B, beside the gathered state dict)."""
    recipe = spec.request.recipe
    config = job.model.config
    if recipe.kind != "lora":
        return strategy.exported(job.model, lambda: models.model_from_config(config))
    masks: dict[str, torch.Tensor] = {}
    for name, mask in job.masks.items():  # one at a time; only the main process keeps them
        gathered = recipes.whole(mask)
        if strategy.is_main:
            masks[name] = gathered.cpu()
    whole = strategy.exported(job.model, lambda: recipes.adapted_model(config, recipe))
    return None if whole is None else recipes.merge_lora(whole, masks)


def save(
    workdir: Path,
    spec: JobSpec,
    job: Restored,
    strategy: OneDevice,
    points: list[CheckpointPoint],
    *,
    publisher: checkpoint.Publisher | None,
) -> None:
    """The complete state of the trainer's current step (every process writes its shards)."""
    trainer = job.trainer
    record = job.record.model_copy(
        update={
            "step": trainer.step,
            "tokens_done": trainer.tokens_done,
            "stream": trainer.stream.state_dict(),
            "rng_python": list(random.getstate()),
            "points": list(points),
        }
    )
    checkpoint.save_state(
        workdir,
        tensors=checkpoint.tensor_state(job.model, trainer.optimizer, job.masks, strategy.device),
        record=record,
        write_model_files=lambda out: models.save_model_files(job.model, job.tokenizer, out),
        writers=Collective(strategy.is_main, strategy.run_id, no_dist=strategy.world == 1),
        publisher=publisher,
    )


def prepare_once(
    spec: JobSpec, workdir: Path, hooks: JobHooks | None, device: torch.device
) -> bool:
    """Make the state of step 0 unless the work directory has a complete state to resume from;
    returns whether it had one. One process calls it, before any process group exists, so no
    other rank waits inside a collective while it loads, measures and prunes."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = checkpoint.latest_complete_state(workdir)
    checkpoint.clean_workdir(workdir, keep=state)
    if state is not None:
        return True
    faults.pause("prepare")
    prepare(spec, workdir, hooks, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the dense model is gone; give its blocks back
    return False


def wait_for_state(workdir: Path, *, poll_s: float = 0.5) -> Path:
    """The complete state the main process makes or keeps (the other ranks wait here, outside
    any collective; a main process that fails ends the whole group through torchrun)."""
    while True:
        state = checkpoint.latest_complete_state(workdir)
        if state is not None:
            return state
        time.sleep(poll_s)


def post_train(
    spec: JobSpec,
    *,
    workdir: Path,
    artifact_dir: Path,
    hooks: JobHooks | None,
    strategy: OneDevice,
    resumed: bool,
    deadline: float | None = None,
) -> JobOutcome:
    """Train from the newest complete state to the end (or a decision, or ``deadline`` on the
    monotonic clock: then the state is saved and the job ends ``requeued`` to go on later)."""
    if (hooks is None) == strategy.is_main:
        raise PipelineError("the hooks belong to the main process and to it only")
    state = checkpoint.latest_complete_state(workdir)
    if state is None:
        raise PipelineError("the preparation left no complete state to start from")
    # Each rank's peak host memory over the load, in the work directory: a sharded load peaks
    # near its shard, never near the whole model. Only a rank's process, the job's own, resets
    # its high-water mark for it (workers.ml.host_memory).
    with host_memory.watch(reset=strategy.world > 1) as load:
        job = restore(spec, state, strategy)
    host_memory.write_load_report(
        workdir,
        load,
        rank=strategy.rank,
        world=strategy.world,
        step=job.record.step,
        model=job.model,
        optimizer=job.trainer.optimizer,
        masks=job.masks,
    )
    trainer, measured = job.trainer, job.record.measured
    points = list(job.record.points)
    if hooks is not None and resumed:
        hooks.on_measured(measured)
        hooks.on_resume(trainer.tokens_done, list(points))

    total_tokens = spec.total_steps * spec.tokens_per_step
    every = max(1, min(50, spec.total_steps // 200))
    batch = max(1, spec.request.batch_size)
    out_of_time = False

    def progress(step: int) -> bool:
        """Report progress; whether the attempt must stop now (decided by the main process)."""
        nonlocal out_of_time
        if hooks is not None:
            hooks.on_progress(step * spec.tokens_per_step, total_tokens)
        if deadline is not None:
            out_of_time = bool(strategy.broadcast(time.monotonic() >= deadline))
        return out_of_time

    def finish(status: JobStatus, reason: str | None) -> JobOutcome:
        artifact = None
        if status in ("succeeded", "stopped_early"):
            # Gathering is collective; the main process then writes alone, outside any
            # collective: the others are done.
            whole = export(spec, job, strategy)
            if whole is not None:
                artifact = models.save_pretrained(whole, job.tokenizer, artifact_dir)  # type: ignore[arg-type]
        return JobOutcome(status, measured, points, artifact, reason)

    # Only the main process publishes states; every error path still waits for them.
    publisher = checkpoint.Publisher() if strategy.is_main else None
    try:
        for target in checkpoint_steps(spec.total_steps, spec.request.checkpoints):
            if target <= trainer.step:
                continue
            trainer.train_until(target, on_step=progress, every=every)
            if out_of_time:
                save(workdir, spec, job, strategy, points, publisher=publisher)
                tokens = trainer.tokens_done
                return finish("requeued", f"the attempt's time limit; saved at {tokens} tokens")
            loss, _stderr = strategy.held_out_loss(job.model, job.splits.eval, batch)
            flagged, note = below_l0(loss, measured)
            point = CheckpointPoint(trainer.tokens_done, loss, flagged, note)
            points.append(point)
            save(workdir, spec, job, strategy, points, publisher=publisher)
            decision, reason = Decision.CONTINUE, None
            if hooks is not None:
                decision, reason = hooks.on_checkpoint(point, list(points))
            decision, reason = strategy.broadcast((decision, reason))
            if decision is Decision.CANCEL:
                return finish("cancelled", reason)
            if decision is Decision.STOP:
                return finish("stopped_early", reason)
        if hooks is not None:
            hooks.on_progress(trainer.tokens_done, total_tokens)
        return finish("succeeded", None)
    finally:
        if publisher is not None:
            publisher.drain()


def prune_and_post_train(
    spec: JobSpec,
    *,
    workdir: Path,
    artifact_dir: Path,
    hooks: JobHooks,
    deadline: float | None = None,
) -> JobOutcome:
    """Run (or resume) one job on this process and its one device; see the module docstring."""
    strategy = OneDevice(spec)
    resumed = prepare_once(spec, workdir, hooks, strategy.device)
    return post_train(
        spec,
        workdir=workdir,
        artifact_dir=artifact_dir,
        hooks=hooks,
        strategy=strategy,
        resumed=resumed,
        deadline=deadline,
    )
