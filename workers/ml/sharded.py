"""One prune -> post-train job on several devices: data-parallel, sharded with FSDP2.

Runs inside each of the ``devices`` processes that ``torchrun`` starts (``workers/launch.py``);
``torch.distributed`` is initialised by the caller (NCCL on GPUs, gloo on CPU). The job is the
one ``workers.ml.pipeline`` runs, split by who does what:

- rank 0 alone prepares: loads the dense model, measures L0, prunes, measures ρ and the loss
  after pruning, and saves that as a complete state at step 0 (the pipeline's own format and
  code). The other ranks wait at a barrier, then every rank loads the pruned model from it, so
  they all start from the same weights, masks and measurements;
- every rank shards the model with ``fully_shard`` per decoder layer, then the whole model
  (each device holds 1/N of the weights, gradients and AdamW states; bf16 compute with fp32
  master weights on CUDA through ``MixedPrecisionPolicy``), turns the 2:4 / unstructured masks
  into DTensors with their parameter's placement so they stay applied shard by shard, draws
  the same global batch and trains on its own rows (``DataShard``);
- at each checkpoint every rank evaluates its share of the held-out blocks (the losses are
  gathered, so every rank knows the same loss), all ranks write one sharded checkpoint
  (``torch.distributed.checkpoint``) into a temporary directory that rank 0 completes and
  renames, and rank 0 asks the hooks what to do (continue, stop, cancel) and broadcasts it;
- the artifact is gathered to rank 0 and saved as a normal HF model directory.

A later launch resumes from the newest complete state, sharded or the step-0 one. Only rank 0
calls the hooks, so the job's database writes happen once whatever the number of devices.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedModel

from workers.ml import models, safe_state
from workers.ml.evaluate import block_losses
from workers.ml.pipeline import (
    COMPLETE,
    STATE_FORMAT,
    STATE_PREFIX,
    TMP_PREFIX,
    CheckpointPoint,
    Decision,
    JobHooks,
    JobOutcome,
    JobSpec,
    Measured,
    PipelineError,
    _clean_workdir,
    _resolve_dtypes,
    _spec_key,
    _state_format,
    _train_config,
    below_l0,
    checkpoint_steps,
    enable_activation_checkpointing,
    evaluator,
    latest_complete_state,
    load_model_and_data,
    start_fresh,
)
from workers.ml.prune import apply_masks
from workers.ml.train import DataShard, Trainer

#: Written by rank 0 when the job ends: what ``JobOutcome`` the launcher reports.
OUTCOME_FILE = "outcome.json"


def rank_device(spec: JobSpec) -> torch.device:
    """This process's device: its local GPU, or the CPU."""
    if spec.device == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _prepare(spec: JobSpec, workdir: Path, hooks: JobHooks | None) -> None:
    """Rank 0: L0, pruning and the measurements, saved as the complete state of step 0."""
    device = rank_device(spec)
    _, compute = _resolve_dtypes(spec)
    model, tokenizer, splits = load_model_and_data(spec, None, device)
    cfg = _train_config(spec, spec.total_steps)
    start_fresh(
        spec,
        workdir,
        model=model,
        tokenizer=tokenizer,
        splits=splits,
        cfg=cfg,
        device=device,
        evaluate=evaluator(model, splits, spec, device, compute),
        # Only for the step-0 state (an empty optimizer, the stream at its start); the ranks
        # build their own trainers over the sharded model.
        make_trainer=lambda masks: Trainer(
            model, splits.train, cfg, masks=masks, apply_masks=apply_masks
        ),
        hooks=hooks,
    )


def _shard(model: PreTrainedModel, spec: JobSpec, device: torch.device) -> None:
    """``fully_shard`` each decoder layer, then the model (embeddings, norm and head)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and spec.dtype == "bfloat16":
        # Parameters gathered and computed in bf16, gradients reduced in fp32, fp32 masters kept.
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    _, _, layers = models.decoder_layers_owner(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _sharded_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Each full keep-mask as a DTensor laid out like its (sharded) parameter."""
    params = dict(model.named_parameters())
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        param = params[name]
        if not isinstance(param, DTensor):
            raise PipelineError(f"parameter {name} is not sharded")
        out[name] = distribute_tensor(
            mask.to(param.device_mesh.device_type), param.device_mesh, list(param.placements)
        )
    return out


def _evaluate(
    model: torch.nn.Module, blocks: torch.Tensor, batch_size: int, device: torch.device
) -> float:
    """Held-out loss with the blocks split over the ranks; every rank gets the same value.

    Every rank runs the same number of forward passes (a sharded forward is a collective), so
    ranks with one block fewer evaluate a copy of their last block and leave it out.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    n = blocks.shape[0]
    per_rank = -(-n // world)
    index = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp(max=n - 1)
    keep = torch.arange(rank * per_rank, (rank + 1) * per_rank) < n
    losses = block_losses(model, blocks[index], batch_size=batch_size, device=device)
    sums = torch.stack([(losses * keep).sum(), keep.sum().double()]).to(device)
    dist.all_reduce(sums)
    return float(sums[0] / sums[1])


def _save_sharded(
    workdir: Path,
    *,
    spec: JobSpec,
    model: torch.nn.Module,
    trainer: Trainer,
    pruned: Path,
    masks: dict[str, torch.Tensor],
    measured: Measured,
    points: list[CheckpointPoint],
) -> None:
    """A complete sharded state: every rank writes its shards, rank 0 the rest and the marker.

    As in the single-device path, the state is written into a temporary directory, renamed and
    marked COMPLETE last, so a crash at any moment leaves the previous complete state.
    """
    rank = dist.get_rank()
    final = workdir / f"{STATE_PREFIX}{trainer.step:012d}"
    tmp = workdir / f"{TMP_PREFIX}{final.name}-sharded"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, trainer.optimizer)
    dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "dcp"))
    dist.barrier()
    if rank == 0:
        # The pruned architecture and tokenizer (no weights: those are in dcp/).
        shutil.copytree(pruned, tmp / "model", ignore=shutil.ignore_patterns("*.safetensors"))
        safe_state.save(masks, tmp, "masks")
        safe_state.save(
            {"step": trainer.step, "stream": trainer.stream.state_dict()}, tmp, "trainer"
        )
        meta = {
            "format": STATE_FORMAT,
            "spec": _spec_key(spec),
            "step": trainer.step,
            "tokens_done": trainer.tokens_done,
            "measured": asdict(measured),
            "points": [asdict(p) for p in points],
            "sharded": dist.get_world_size(),
            "pruned": str(pruned),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        models.fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        models.fsync_dir(workdir)
        with open(final / COMPLETE, "w") as fh:
            fh.write(f"{trainer.step}\n")
            fh.flush()
            os.fsync(fh.fileno())
        models.fsync_dir(final)
        # Keep the newest complete state and the step-0 state whose weights it builds on.
        _clean_workdir(workdir, keep=final, also=pruned.parent)
    dist.barrier()


def _broadcast(decision: Decision, reason: str | None) -> tuple[Decision, str | None]:
    message: list[Any] = [decision.value, reason]
    dist.broadcast_object_list(message, src=0)
    return Decision(message[0]), message[1]


def run_sharded(
    spec: JobSpec, *, workdir: Path, artifact_dir: Path, hooks: JobHooks | None
) -> JobOutcome:
    """Run (or resume) the job on this rank; ``hooks`` on rank 0 only. See the module docstring."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != spec.devices:
        raise PipelineError(f"the job asks for {spec.devices} devices; {world} processes run")
    if (hooks is None) != (rank != 0):
        raise PipelineError("the hooks belong to rank 0 and to rank 0 only")
    device = rank_device(spec)
    workdir.mkdir(parents=True, exist_ok=True)

    state = latest_complete_state(workdir)
    if state is not None and _state_format(state) != STATE_FORMAT:
        state = None
    if state is None:
        if rank == 0:
            _clean_workdir(workdir, keep=None)
            _prepare(spec, workdir, hooks)
        dist.barrier()
        state = latest_complete_state(workdir)
        if state is None:
            raise PipelineError("rank 0 did not leave a complete state to start from")
        resumed = False
    else:
        resumed = True
    meta = json.loads((state / "meta.json").read_text())
    if meta["spec"] != _spec_key(spec):
        raise PipelineError(f"{state} was saved by a different job spec; not resuming")
    sharded = "sharded" in meta
    pruned = Path(meta["pruned"]) if sharded else state / "model"
    measured = Measured(**meta["measured"])
    points = [CheckpointPoint(**p) for p in meta["points"]]

    model, _tokenizer, splits = load_model_and_data(spec, pruned, device)
    if measured.protocol != splits.protocol:
        raise PipelineError("the evaluation set changed since the saved state was written")
    if spec.activation_checkpointing:
        enable_activation_checkpointing(model)
    full_masks = safe_state.load(state, "masks")
    _shard(model, spec, device)
    masks = _sharded_masks(model, full_masks)

    cfg = _train_config(spec, spec.total_steps)
    trainer = Trainer(
        model,
        splits.train,
        cfg,
        device=device,
        masks=masks,
        apply_masks=apply_masks,
        shard=DataShard(rank, world),
    )
    if sharded:
        model_state, optim_state = get_state_dict(model, trainer.optimizer)
        loaded: dict[str, Any] = {"model": model_state, "optim": optim_state}
        dcp_load(loaded, checkpoint_id=str(state / "dcp"))
        set_state_dict(
            model,
            trainer.optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optim"],
        )
        saved = safe_state.load(state, "trainer")
        trainer.step = int(saved["step"])
        trainer.stream.load_state_dict(saved["stream"])
    if hooks is not None and resumed:
        hooks.on_measured(measured)
        hooks.on_resume(trainer.tokens_done, list(points))

    total_tokens = spec.total_steps * spec.tokens_per_step
    every = max(1, min(50, spec.total_steps // 200))

    def progress(step: int) -> None:
        if hooks is not None:
            hooks.on_progress(step * spec.tokens_per_step, total_tokens)

    def save() -> None:
        _save_sharded(
            workdir,
            spec=spec,
            model=model,
            trainer=trainer,
            pruned=pruned,
            masks=full_masks,
            measured=measured,
            points=points,
        )

    def finish(status: str, reason: str | None) -> JobOutcome:
        artifact = _save_artifact(model, pruned, artifact_dir) if status != "cancelled" else None
        outcome = JobOutcome(status, measured, points, artifact, reason)
        if rank == 0:
            write_outcome(workdir, outcome)
        return outcome

    for target in checkpoint_steps(spec.total_steps, spec.checkpoints):
        if target <= trainer.step:
            continue
        trainer.run(target, on_step=progress, every=every)
        loss = _evaluate(model, splits.eval, max(1, spec.batch_size), device)
        flagged, note = below_l0(loss, measured)
        point = CheckpointPoint(tokens=trainer.tokens_done, loss=loss, below_l0=flagged, note=note)
        points.append(point)
        save()
        decision, reason = Decision.CONTINUE, None
        if hooks is not None:
            decision, reason = hooks.on_checkpoint(point, list(points))
        decision, reason = _broadcast(decision, reason)
        if decision is Decision.CANCEL:
            return finish("cancelled", reason)
        if decision is Decision.STOP:
            return finish("stopped_early", reason)
    if hooks is not None:
        hooks.on_progress(trainer.tokens_done, total_tokens)
    return finish("succeeded", None)


def _save_artifact(model: torch.nn.Module, pruned: Path, artifact_dir: Path) -> Path | None:
    """Gather the full weights to rank 0 and save them as a normal HF model directory there."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    artifact: Path | None = None
    if dist.get_rank() == 0:
        dense, tokenizer = models.load_causal_lm(str(pruned), device=torch.device("cpu"))
        dense.load_state_dict(full)
        artifact = Path(models.save_pretrained(dense, tokenizer, artifact_dir))
    dist.barrier()
    return artifact


def write_outcome(workdir: Path, outcome: JobOutcome) -> None:
    """Rank 0's report of how the job ended, for the launcher."""
    data = {
        "status": outcome.status,
        "measured": asdict(outcome.measured),
        "points": [asdict(p) for p in outcome.points],
        "artifact": str(outcome.artifact) if outcome.artifact else None,
        "reason": outcome.reason,
    }
    tmp = workdir / f"{OUTCOME_FILE}.tmp"
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, workdir / OUTCOME_FILE)


def read_outcome(workdir: Path) -> JobOutcome | None:
    """The outcome rank 0 wrote, or None when the job did not get that far."""
    path = workdir / OUTCOME_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    artifact = data["artifact"]
    return JobOutcome(
        status=data["status"],
        measured=Measured(**data["measured"]),
        points=[CheckpointPoint(**p) for p in data["points"]],
        artifact=Path(artifact) if artifact else None,
        reason=data["reason"],
    )
