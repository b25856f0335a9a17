"""Post-training loop: AdamW, warm-up then a constant, cosine or warmup-stable-decay LR,
gradient clipping, gradient accumulation.

The loop is what a bare PyTorch loop does (forward, backward, clip, AdamW step, zero_grad) plus
only what a job needs: the learning-rate value for the step (a float assignment), the data
cursor, and re-applying pruning masks after each optimizer step. The loss is the chunked
cross-entropy of ``workers.ml.evaluate`` (no float32 logits of a whole batch), or the recipe's
(``loss_fn``: distillation's, ``workers.ml.recipes``) in the same loop, and on CUDA the
next micro-batch is already on its way to the device while one trains (:class:`BatchLoader`).
It never reads a value back from the device inside a step: the running loss and the gradient
norm stay device tensors and are read only when a caller asks (at checkpoints), so a GPU never
waits on the host.

Where a job starts on CUDA, :func:`configure_cuda` turns on TF32 for float32 matmuls, and
:func:`compile_wanted` says whether :func:`compile_blocks` compiles its decoder blocks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from workers.ml import models
from workers.ml.data import BatchStream, BlockSource
from workers.ml.evaluate import LMParts, autocast_context, causal_lm_loss

MaskFn = Callable[[nn.Module, dict[str, torch.Tensor]], None]
#: A training loss of a batch: ``(model, input_ids, parts) -> scalar``, run inside the job's
#: autocast; the LM loss by default, the recipe's (``workers.ml.recipes.Distillation``) otherwise.
LossFn = Callable[[nn.Module, torch.Tensor, LMParts], torch.Tensor]


def lm_loss(model: nn.Module, input_ids: torch.Tensor, parts: LMParts) -> torch.Tensor:
    """The default training loss: the chunked next-token cross-entropy."""
    return causal_lm_loss(model, input_ids, parts=parts)


class TensorBlocks:
    """Blocks held as one tensor on the training device, so a batch is one gather there instead
    of a host copy that a GPU would wait on every step (8 bytes a token: 80 MB for 10M tokens)."""

    def __init__(self, blocks: torch.Tensor, device: torch.device) -> None:
        if blocks.dim() != 2:
            raise ValueError("training blocks must be [n_blocks, seq_len]")
        self.blocks = blocks.to(device)

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.blocks.shape[1])

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        return self.blocks[indices.to(self.blocks.device, non_blocking=True)]


@dataclass(frozen=True)
class DataShard:
    """This process's part of data-parallel training: rank ``rank`` of ``world`` processes.

    Every process draws the same global batch (``batch_size × world`` blocks) from the stream and
    trains on its own ``batch_size`` rows, so ``world`` processes at ``batch_size`` see exactly
    the sequences one process sees at ``batch_size × world``.
    """

    rank: int = 0
    world: int = 1


@dataclass
class _InFlight:
    """A micro-batch on its way to the device (``side``: copied on the loader's CUDA stream)."""

    batch: torch.Tensor
    side: bool


class BatchLoader:
    """A process's micro-batches on the training device, drawn from the stream in its order.

    :meth:`send` draws the next micro-batch and starts its copy: on CUDA, rows read from host
    memory (token shards) are copied into pinned memory and sent with ``non_blocking=True`` on
    a side stream, so the copy runs beside the compute and the host does not wait for it;
    :meth:`ready` makes the training stream wait (on the device) for that copy before the batch
    is used. Elsewhere (CPU, or blocks already on the device) a batch is the rows as they are.
    The trainer sends micro-batch k+1 right after launching the backward of k, so each batch is
    drawn exactly as it was without the loader, one micro-batch early at most and never past
    the end of a ``train_until``: the stream's position at any return is that of the batches
    trained on, and a resumed job draws the same batches.
    """

    def __init__(
        self, blocks: BlockSource, stream: BatchStream, rows: slice, device: torch.device
    ) -> None:
        self.blocks, self.stream, self.rows, self.device = blocks, stream, rows, device
        self._side = (
            torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            if device.type == "cuda"
            else None
        )

    def send(self) -> _InFlight:
        """Draw the next micro-batch and start its copy to the device."""
        rows = self.blocks.take(self.stream.next_indices()[self.rows])
        if self._side is None or rows.device.type != "cpu":
            return _InFlight(rows.to(self.device, non_blocking=True), side=False)
        pinned = rows.pin_memory()
        with torch.cuda.stream(self._side):
            return _InFlight(pinned.to(self.device, non_blocking=True), side=True)

    def ready(self, sent: _InFlight) -> torch.Tensor:
        """The batch, usable on the current stream once its copy is done (a device-side wait)."""
        if sent.side:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._side)  # type: ignore[arg-type]
            # Its memory belongs to the side stream: not reused before this stream is done.
            sent.batch.record_stream(current)
        return sent.batch


@dataclass(frozen=True)
class TrainConfig:
    """What one post-training (or pretraining) run needs besides the model and data."""

    lr: float = 3e-4
    schedule: str = "constant"  # "constant" | "cosine" | "wsd"
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.0  # floor of cosine and wsd as a fraction of `lr`
    decay_steps: int = 0  # wsd: the last steps, over which the LR falls to its floor
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 1
    batch_size: int = 8
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r} (one of {', '.join(SCHEDULES)})")
        if self.total_steps < 1 or self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("total_steps, grad_accum and batch_size must be >= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("warmup_steps must be within [0, total_steps]")
        if self.decay_steps < 0 or self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError("warmup_steps + decay_steps must be within [0, total_steps]")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be within [0, 1]")
        clip = self.grad_clip
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise ValueError("grad_clip must be a positive finite norm, or None")


#: The learning-rate schedules after the warm-up.
SCHEDULES = ("constant", "cosine", "wsd")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (step 0 gets lr / warmup_steps), then

    - ``constant``: `lr`;
    - ``cosine``: a half-cosine from `lr` down to `min_lr_ratio * lr` at the last step;
    - ``wsd`` (warmup-stable-decay, torchtitan's ``decay_ratio``): `lr` until the last
      `decay_steps` steps, then a linear fall towards `min_lr_ratio * lr`, step i of the D
      decay steps at ``1 - (i + 1) / (D + 1)`` of the way (torchtitan's rule: the last step
      still learns).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        into_decay = step - (cfg.total_steps - cfg.decay_steps)
        if into_decay < 0:
            return cfg.lr
        progress = min(1.0, (into_decay + 1) / (cfg.decay_steps + 1))
        return cfg.lr * (floor + (1.0 - floor) * (1.0 - progress))
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def describe_schedule(cfg: TrainConfig) -> str:
    """Human-readable schedule, recorded with the observations (docs/law.md §3)."""
    warm = f"warmup={cfg.warmup_steps / cfg.total_steps:.0%}"
    if cfg.schedule == "constant":
        return f"constant lr={cfg.lr:g} {warm}"
    if cfg.schedule == "wsd":
        decay = f"decay={cfg.decay_steps / cfg.total_steps:.0%}"
        return f"wsd lr={cfg.lr:g} {warm} {decay} floor={cfg.min_lr_ratio:g}"
    return f"cosine lr={cfg.lr:g} {warm} floor={cfg.min_lr_ratio:g}"


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel updates every tensor in one launch; on CPU the default is used.
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def clip_gradients(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients in place so that their global L2 norm is at most ``max_norm``; return
    the norm before clipping, a tensor on the device that is never read here.

    Sharded parameters (FSDP2) have DTensor gradients, whose norm is a partial one on each rank:
    it is completed to the global norm with one all-reduce (torchtitan's ``clip_grad_norm_``),
    then every rank scales its shards by the same factor. Nothing is read back to the host: the
    factor ``min(1, max_norm / (norm + 1e-6))`` is computed on the device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def configure_cuda() -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (call where a job starts on CUDA).

    Float32 matmuls (a float32 job, pruning's calibration, anything outside autocast) then run
    on the tensor cores with a 10-bit mantissa, as torchtitan and torchtune run them; bf16 work
    is unchanged. Only the CUDA backends are set (the legacy flags, which do not touch the CPU's
    oneDNN matmuls and keep ``torch.get_float32_matmul_precision()`` answering ``"high"``).
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def compile_wanted(compile: bool | None, device: torch.device | str) -> bool:
    """Whether a job compiles its decoder blocks: its request's ``compile``, where ``None``
    means on CUDA only (on CPU compiling costs more than it saves on the models run there)."""
    if compile is None:
        return torch.device(device).type == "cuda"
    return compile


def compile_blocks(model: nn.Module, *, backend: str = "inductor", fullgraph: bool = False) -> int:
    """``torch.compile`` each decoder block of ``model`` in place; return how many.

    As torchtitan does, each block is compiled on its own: the blocks share their code, so one
    compilation serves them all (recompiling only for another shape, mode or dtype), and the
    embeddings, final norm, LM head and the chunked loss stay eager. In place
    (``nn.Module.compile``) rather than wrapped: the parameter names stay those of the model (no
    ``_orig_mod.``), so pruning masks, training states and saved models keep theirs.
    ``fullgraph`` stays off: a graph break in a Hugging Face block, or the FSDP2 hooks of a
    sharded block, costs speed, not the job. Call it after activation checkpointing is enabled
    and before ``fully_shard``, the torchtitan order.
    """
    layers = models.decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, fullgraph=fullgraph)
    return len(layers)


class Trainer:
    """Runs optimizer steps over a fixed set of training blocks; resumable via `state_dict`."""

    def __init__(
        self,
        model: nn.Module,
        train_ids: torch.Tensor | BlockSource,
        cfg: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        masks: dict[str, torch.Tensor] | None = None,
        apply_masks: MaskFn | None = None,
        shard: DataShard = DataShard(),
        loss_fn: LossFn = lm_loss,
    ) -> None:
        if masks and apply_masks is None:
            raise ValueError("masks given without the function that applies them")
        if not 0 <= shard.rank < shard.world:
            raise ValueError(f"rank {shard.rank} is not one of {shard.world} processes")
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.masks = masks or None
        self._apply_masks = apply_masks
        self.shard = shard
        self.loss_fn = loss_fn
        self.blocks: BlockSource = (
            TensorBlocks(train_ids, self.device)
            if isinstance(train_ids, torch.Tensor)
            else train_ids
        )
        # Tokens of one optimizer step over all processes.
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * self.blocks.seq_len * shard.world
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.stream = BatchStream(self.blocks.n_blocks, cfg.batch_size * shard.world, seed=cfg.seed)
        mine = slice(shard.rank * cfg.batch_size, (shard.rank + 1) * cfg.batch_size)
        self.loader = BatchLoader(self.blocks, self.stream, mine, self.device)
        self.parts = LMParts(model)
        self.optimizer = make_optimizer(model, cfg, self.device)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._named = dict(model.named_parameters())
        self.step = 0
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        #: The global gradient norm of the last step before clipping (a device tensor), if clipped.
        self.grad_norm: torch.Tensor | None = None

    def _mask_gradients(self, masks: dict[str, torch.Tensor]) -> None:
        """Zero the gradients of pruned weights, which the step after re-zeroes anyway, so that
        the clipping norm is the norm of the weights the model has."""
        with torch.no_grad():
            for name, mask in masks.items():
                grad = self._named[name].grad
                if grad is not None:
                    grad.mul_(mask)

    @property
    def tokens_done(self) -> int:
        """Training tokens seen so far: sequences x seq_len."""
        return self.step * self.tokens_per_step

    def train_until(
        self,
        until_step: int,
        *,
        on_step: Callable[[int], bool | None] | None = None,
        every: int = 10,
    ) -> None:
        """Step until `self.step == until_step`, calling `on_step(step)` every `every` steps; one
        that answers true stops it there."""
        model, opt, cfg = self.model, self.optimizer, self.cfg
        masks, apply_masks = self.masks, self._apply_masks
        dev, loader, parts = self.device, self.loader, self.parts
        accum = cfg.grad_accum
        model.train()
        pending = loader.send() if self.step < until_step else None
        while self.step < until_step:
            lr = lr_at(self.step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            for micro in range(accum):
                assert pending is not None
                batch = loader.ready(pending)
                with autocast_context(dev, self.autocast_dtype):
                    loss = self.loss_fn(model, batch, parts)
                if accum > 1:
                    loss = loss / accum
                loss.backward()  # type: ignore[no-untyped-call]
                self._loss_sum += loss.detach()
                # The next micro-batch travels while this backward runs on the device.
                pending = loader.send() if micro + 1 < accum else None
            if cfg.grad_clip is not None:
                if masks is not None:
                    self._mask_gradients(masks)
                self.grad_norm = clip_gradients(self._params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if masks is not None and apply_masks is not None:
                apply_masks(model, masks)
            self.step += 1
            self._loss_count += 1
            # A true answer ends the run early (the attempt's time limit): the caller saves.
            if on_step is not None and self.step % every == 0 and on_step(self.step):
                return
            if self.step < until_step:
                # Drawn after the step's last word, so no batch is drawn that is not trained on.
                pending = loader.send()

    def pop_train_loss(self) -> float:
        """Mean training loss since the last call (one host sync); nan when no step ran."""
        if self._loss_count == 0:
            return float("nan")
        value = float(self._loss_sum) / self._loss_count
        self._loss_sum.zero_()
        self._loss_count = 0
        return value

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, step, data cursor and RNG states (the model's weights are saved apart)."""
        state: dict[str, Any] = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_python": random.getstate(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` taken on a model of the same structure."""
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["rng_cpu"])
        random.setstate(state["rng_python"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
