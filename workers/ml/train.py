"""Post-training loop: AdamW, warm-up then constant or cosine LR, gradient accumulation.

The loop is what a bare PyTorch loop does (forward, backward, AdamW step, zero_grad) plus
only what a job needs: the learning-rate value for the step (a float assignment), the data
cursor, and re-applying pruning masks after each optimizer step. It never reads a value back
from the device inside a step: the running loss stays a device tensor and is read only when
a caller asks for it (at checkpoints), so a GPU never waits on the host.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.ml.data import BatchStream, BlockSource
from workers.ml.evaluate import autocast_context

MaskFn = Callable[[nn.Module, dict[str, torch.Tensor]], None]


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


@dataclass(frozen=True)
class TrainConfig:
    """What one post-training (or pretraining) run needs besides the model and data."""

    lr: float = 3e-4
    schedule: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of `lr`
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 1
    batch_size: int = 8
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in {"constant", "cosine"}:
            raise ValueError(f"unknown schedule {self.schedule!r} (constant or cosine)")
        if self.total_steps < 1 or self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("total_steps, grad_accum and batch_size must be >= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("warmup_steps must be within [0, total_steps]")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (step 0 gets lr / warmup_steps), then either constant
    at `lr` or a half-cosine from `lr` down to `min_lr_ratio * lr` at the last step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def describe_schedule(cfg: TrainConfig) -> str:
    """Human-readable schedule, recorded with the observations (docs/law.md §3)."""
    warm = f"warmup={cfg.warmup_steps / cfg.total_steps:.0%}"
    if cfg.schedule == "constant":
        return f"constant lr={cfg.lr:g} {warm}"
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
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.step = 0
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0

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
        dev, blocks = self.device, self.blocks
        accum = cfg.grad_accum
        mine = slice(self.shard.rank * cfg.batch_size, (self.shard.rank + 1) * cfg.batch_size)
        model.train()
        while self.step < until_step:
            lr = lr_at(self.step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            for _ in range(accum):
                batch = blocks.take(self.stream.next_indices()[mine]).to(dev, non_blocking=True)
                with autocast_context(dev, self.autocast_dtype):
                    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                if accum > 1:
                    loss = loss / accum
                loss.backward()
                self._loss_sum += loss.detach()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if masks is not None and apply_masks is not None:
                apply_masks(model, masks)
            self.step += 1
            self._loss_count += 1
            # A true answer ends the run early (the attempt's time limit): the caller saves.
            if on_step is not None and self.step % every == 0 and on_step(self.step):
                return

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
