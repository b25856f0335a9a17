"""Wanda scores |W|·‖X‖₂ for the projections of the decoder layers.

‖X‖₂ is, per input channel of a linear layer, the L2 norm over all calibration tokens of the
layer's input. All norms come from one forward pass of the dense model with hooks (not Wanda's
layer-by-layer propagation of already-pruned outputs): one pass instead of two per layer, and the
methods can compare every layer before choosing which to sparsify. Projections that read the
same tensor share one hook: q/k/v read the attention input, gate/up the MLP input, in every
supported architecture, so a layer costs four norm reductions, not seven.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.ml.models import decoder_layers, layer_parts
from workers.ml.prune.base import run_calibration


def input_norms(
    model: nn.Module, calib_ids: torch.Tensor, *, device: torch.device, batch_size: int
) -> dict[str, torch.Tensor]:
    """‖X‖₂ per input channel (float32) of every decoder-layer projection, by module name."""
    module_names = {id(module): name for name, module in model.named_modules()}
    sq_sums: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(key: str) -> Any:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            norm = torch.linalg.vector_norm(x, dim=0, dtype=torch.float32)
            acc = sq_sums.get(key)
            if acc is None:
                sq_sums[key] = norm.square()
            else:
                acc.add_(norm.square())

        return hook

    shared: dict[str, str] = {}
    for layer in decoder_layers(model):
        parts = layer_parts(layer)
        groups = ((parts.q, parts.k, parts.v), (parts.o,), (parts.gate, parts.up), (parts.down,))
        for group in groups:
            lead = module_names[id(group[0])]
            for linear in group:
                shared[module_names[id(linear)]] = lead
            handles.append(group[0].register_forward_pre_hook(make_hook(lead)))
    try:
        run_calibration(model, calib_ids, device=device, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    roots = {lead: sq.sqrt() for lead, sq in sq_sums.items()}
    return {name: roots[lead] for name, lead in shared.items()}


def scores(weight: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X‖₂ broadcast over output rows, in float32."""
    return weight.detach().abs().float().mul_(norm.to(weight.device)[None, :])
