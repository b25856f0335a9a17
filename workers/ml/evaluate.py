"""Held-out loss: mean token cross-entropy in nats, with its standard error (docs/law.md §3)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional


def autocast_context(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    """Mixed-precision context for `dtype` on `device`; a no-op for float32 or None."""
    dev = torch.device(device)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def eval_loss(
    model: nn.Module,
    eval_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy (nats) over every predicted token of `eval_ids`, and its standard error.

    Each `[n, seq_len]` block predicts tokens 1..seq_len-1 from their prefixes; all blocks
    predict the same number of tokens, so the token mean equals the mean of the per-block
    means. The standard error is taken over blocks (std of block means / sqrt(n)): tokens of
    one block are correlated, so a per-token error would understate the noise.
    """
    means = block_losses(
        model, eval_ids, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype
    )
    n = means.numel()
    mean = float(means.mean())
    stderr = float(means.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return mean, stderr


def block_losses(
    model: nn.Module,
    eval_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each ``[n, seq_len]`` block (float64, on the CPU).

    ``no_grad`` rather than ``inference_mode``: a sharded (FSDP) model gathers its parameters
    for the forward pass and must be able to train on them again afterwards.
    """
    if eval_ids.dim() != 2 or eval_ids.shape[1] < 2:
        raise ValueError("eval_ids must be [n, seq_len] with seq_len >= 2")
    dev = torch.device(device)
    block_means: list[torch.Tensor] = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, eval_ids.shape[0], batch_size):
            batch = eval_ids[start : start + batch_size].to(dev, non_blocking=True)
            with autocast_context(dev, autocast_dtype):
                logits = model(input_ids=batch).logits
            # float32 cross-entropy: bf16 log-softmax over a large vocabulary loses ~1e-2 nats.
            losses = functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                batch[:, 1:].reshape(-1),
                reduction="none",
            ).view(batch.shape[0], -1)
            block_means.append(losses.mean(dim=1).double())
    return torch.cat(block_means).cpu()
