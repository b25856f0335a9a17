"""Training FLOPs of a post-training job, and the throughput to expect from them.

The count is the one published MFU figures use (Chowdhery et al. 2022, "PaLM", appendix B):

    FLOPs per token = 6·N + 12·L·d·s

N: the parameters that take part in a matrix product (:attr:`ModelShape.matmul_params`: all but
an untied input embedding, which is a lookup); 6·N: forward 2·N, backward 4·N. 12·L·d·s: the
attention scores and their product with the values, forward and backward, over L layers,
d = heads × head_dim and s the sequence length, the whole s × s matrix counted (as PaLM and
most published figures do, although causal attention needs half of it). Activation
checkpointing recomputes each layer's forward in the backward: the hardware then does
8·N + 16·L·d·s a token, but MFU counts only the model's 6·N + 12·L·d·s (the recomputation is
the price of the memory it saves, and shows as a lower throughput).

A 2:4 job trains its masked weights densely (the masks zero them; no sparse kernel runs), so
its FLOPs are those of the dense shape; a depth or width job trains the smaller shape the
pruning plan gives.

Torch-free, like :mod:`app.core.memory`: the API host answers from ``config.json`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from app.core.memory import ModelShape

#: Peak dense (no sparsity) bf16 tensor-core TFLOP/s by device name, from NVIDIA's datasheets;
#: the first pattern that matches the device's name wins, so the more specific names come
#: first.
PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH1[02]0\b.*\bNVL\b", 835.0),
    (r"\bGH200\b", 989.0),
    (r"\bH200\b", 989.0),
    (r"\bH100\b", 989.0),  # SXM
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a device by its name, or None when it is not in the table."""
    for pattern, tflops in PEAK_BF16_DENSE_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops
    return None


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Model FLOPs of training on one token: 6·N + 12·L·d·s (the module docstring)."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    return 6.0 * shape.matmul_params + 12.0 * shape.layers * shape.q_dim * seq_len


def hardware_flops_per_token(shape: ModelShape, seq_len: int, *, checkpointing: bool) -> float:
    """FLOPs the device does per token: the model's, plus one more forward of every layer when
    activation checkpointing recomputes it (2·N + 4·L·d·s)."""
    model = flops_per_token(shape, seq_len)
    return model * 4.0 / 3.0 if checkpointing else model


@dataclass(frozen=True)
class Throughput:
    """Tokens a second a job can expect at a model FLOPs utilisation (MFU)."""

    flops_per_token: float
    per_device: float
    devices: int

    @property
    def total(self) -> float:
        """Tokens a second over all the job's devices."""
        return self.per_device * self.devices

    def hours_for(self, tokens: float) -> float:
        """Hours of training for ``tokens`` post-training tokens."""
        return tokens / self.total / 3600.0


def expected_throughput(
    shape: ModelShape, *, seq_len: int, devices: int, mfu: float, peak_tflops: float
) -> Throughput:
    """Tokens a second of a job training ``shape`` on ``devices`` devices of ``peak_tflops``
    that reach ``mfu`` (a fraction of the peak in model FLOPs, recomputation not counted)."""
    if not 0.0 < mfu <= 1.0 or peak_tflops <= 0.0 or devices < 1:
        raise ValueError("mfu must be in (0, 1], peak_tflops > 0 and devices >= 1")
    per_token = flops_per_token(shape, seq_len)
    return Throughput(per_token, mfu * peak_tflops * 1e12 / per_token, devices)


# --------------------------------------------------------------------------- recovery recipes
#
# FLOPs per post-training token by recovery recipe (app.core.recipes; docs/law.md §7), counted
# as above: N the pruned model's matmul parameters, L its layers, d its query width, s the
# sequence length; N0, L0, d0 the dense model's.
#
#   full     6·N + 12·L·d·s                       every weight trains
#   lora     2·N + 2·N + 12·L·d·s + 6·N_adapters  forward 2·N; backward through the activations
#                                                 only (2·N: no weight gradients of frozen
#                                                 weights); attention has no weights, so its
#                                                 forward and backward stay; the adapters train
#   distill  6·N + 12·L·d·s + 2·N0 + 4·L0·d0·s    the student's full training, plus the frozen
#                                                 teacher's forward (its attention included)
#
# LoRA on a masked model (2:4, unstructured) trains what it ships: each adapted projection
# computes with W + scale·(B@A)⊙M (workers/ml/recipes.py, ``mask_adapters``), whose backward
# forms the weight-shaped gradient of the masked update, 2·n more per adapted weight n:
#
#   lora, masked  4·N + 2·N_adapted + 12·L·d·s    (dropout 0; with dropout the adapter term is
#                                                 a second product: 4·N + 6·N_adapted + ...)
#
# Where only parameter counts are known (``POST /plan``), the attention terms and the adapters
# are left out: full 6·N, lora 4·N (6·N on a masked model, every projection adapted), distill
# 6·N + 2·N0.


def lora_adapter_params(shape: ModelShape, rank: int, targets: Iterable[str]) -> int:
    """Parameters of LoRA adapters of rank ``rank`` on the named projections of every layer:
    r·(in + out) each (A is r × in, B is out × r)."""
    return shape.lora_params(rank, targets)


def _attention(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of attention per token: scores and their product with the values."""
    return 4.0 * shape.layers * shape.q_dim * seq_len


def recipe_flops_per_token(
    recipe: str,
    shape: ModelShape,
    seq_len: int,
    *,
    teacher: ModelShape | None = None,
    adapter_params: int = 0,
    masked_adapted: int | None = None,
    dropout: bool = False,
) -> float:
    """Model FLOPs of post-training one token of the pruned ``shape`` by ``recipe`` (the table
    above): ``teacher`` is the dense model (distill), ``adapter_params`` the adapters' (lora);
    ``masked_adapted``, on a masked model, the weights of the adapted projections (their masked
    update is formed whole: 2 FLOPs a weight more, 6 with ``dropout``)."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    n = float(shape.matmul_params)
    attention = 3.0 * _attention(shape, seq_len)  # forward + backward (2×) = 12·L·d·s
    if recipe == "full":
        return 6.0 * n + attention
    if recipe == "lora":
        if masked_adapted is not None:
            return 4.0 * n + attention + (6.0 if dropout else 2.0) * masked_adapted
        return 4.0 * n + attention + 6.0 * adapter_params
    if recipe == "distill":
        if teacher is None:
            raise ValueError("distill needs the teacher's (the dense model's) shape")
        return 6.0 * n + attention + 2.0 * teacher.matmul_params + _attention(teacher, seq_len)
    raise ValueError(f"unknown recipe {recipe!r}")


def recipe_flops_per_token_of_params(
    recipe: str, n_trained: float, n0: float, *, masked: bool = False
) -> float:
    """FLOPs per token by ``recipe`` from parameter counts alone: ``n_trained`` the pruned
    model's (those its matrix products use), ``n0`` the dense teacher's, ``masked`` whether the
    pruning left keep-masks (2:4, unstructured: LoRA then forms its masked update whole).
    Attention and the adapters need the model's shape and are left out: full 6·N, lora 4·N
    (masked 6·N), distill 6·N + 2·N0."""
    if recipe == "full":
        return 6.0 * n_trained
    if recipe == "lora":
        return (6.0 if masked else 4.0) * n_trained
    if recipe == "distill":
        return 6.0 * n_trained + 2.0 * n0
    raise ValueError(f"unknown recipe {recipe!r}")
