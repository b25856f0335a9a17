"""Shared types of the pruning methods: the pruner interface, its outcome, errors, calibration,
and the model's projections by role.

Calibration tokens always come from the caller and must be drawn from the *training* split: the
evaluation set measures L0 and L (docs/law.md §3), and scoring weights on it would leak it into the
pruning decision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from app.core.pruning import PrunePlan
from workers.ml.models import decoder_layers, layer_parts


class PruneError(ValueError):
    """A pruning request that cannot be met (ρ outside (0, 1), above a method's maximum, ...)."""


@dataclass
class PruneOutcome:
    """What a method did: keep-masks (mask methods only) and method-specific details."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Pruner(ABC):
    """One pruning method. A new method is one subclass in its own module plus a registry entry.

    ``structural`` methods remove parameters (ρ = removed parameters ÷ N0); the others zero
    weights through keep-masks (ρ = weights set to zero ÷ N0). ``run`` takes its counts from the
    plan (``app.core.pruning``, made from the model's config), chooses which units go by its
    scores, modifies the model in place and returns what it did; ``prune()`` in the package
    measures ρ from the model.
    """

    name: ClassVar[str]
    structural: ClassVar[bool]

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        plan: PrunePlan,
        calib_ids: torch.Tensor,
        *,
        device: torch.device,
        batch_size: int,
    ) -> PruneOutcome:
        """Prune ``model`` in place as ``plan`` counts."""


@dataclass(frozen=True)
class Projection:
    """One projection of a decoder layer: its module name, role (``q`` … ``down``), layer."""

    name: str
    role: str
    layer: int
    linear: nn.Linear


def projections(model: nn.Module) -> list[Projection]:
    """Every attention and MLP projection of every decoder layer, layer by layer, by role."""
    module_names = {id(module): name for name, module in model.named_modules()}
    return [
        Projection(module_names[id(linear)], role, i, linear)
        for i, layer in enumerate(decoder_layers(model))
        for role, linear in layer_parts(layer).linears().items()
    ]


def calibration_batches(
    calib_ids: torch.Tensor, *, device: torch.device, batch_size: int
) -> Iterator[torch.Tensor]:
    """Yield ``calib_ids`` (``[n_sequences, seq_len]`` token ids) in chunks on ``device``."""
    if calib_ids.ndim != 2 or calib_ids.numel() == 0:
        raise PruneError(
            f"calibration ids must be a non-empty [n_sequences, seq_len] tensor, "
            f"got shape {tuple(calib_ids.shape)}"
        )
    if batch_size < 1:
        raise PruneError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, calib_ids.shape[0], batch_size):
        yield calib_ids[start : start + batch_size].to(device=device, dtype=torch.long)


def trunk(model: nn.Module) -> nn.Module:
    """The module that runs embeddings and decoder layers without the LM head.

    Calibration only needs the decoder layers' activations; skipping the head saves a
    ``hidden × vocab`` matmul per token, the largest single one in small models.
    """
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            candidate = get_decoder()
        except (AttributeError, ValueError, NotImplementedError):
            candidate = None
        if isinstance(candidate, nn.Module):
            layers = decoder_layers(model)
            if any(m is layers for m in candidate.modules()):
                return candidate
    return model


def run_calibration(
    model: nn.Module, calib_ids: torch.Tensor, *, device: torch.device, batch_size: int
) -> int:
    """Forward the calibration tokens (hooks do the recording); return the number of tokens."""
    body = trunk(model)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in calibration_batches(calib_ids, device=device, batch_size=batch_size):
                body(input_ids=batch, use_cache=False)
                tokens += batch.numel()
    finally:
        model.train(was_training)
    return tokens


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
