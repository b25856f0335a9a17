"""Depth pruning: remove whole decoder layers ranked by block influence (ShortGPT's BI).

BI of a layer = 1 − mean over calibration tokens of cos(h_in, h_out), the cosine similarity
between the hidden state entering and leaving the layer. A layer that barely rotates the
residual stream (low BI) is the cheapest to drop.

Count rule (the plan's, ``app.core.pruning``): the number removed is the one (between 1 and
L − 1) whose ρ = removed parameters ÷ N0 is closest to the target. Granularity: one layer, so ρ
lands within half a layer's share of N0 of the target. A target more than half a layer's share
above the maximum (all layers but one removed) is a PruneError that states the maximum. The
layers removed are the ones with the lowest BI.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional

from app.core.pruning import PrunePlan
from workers.ml.models import count_parameters, decoder_layers_owner
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner, run_calibration


def block_influence(
    model: nn.Module, calib_ids: torch.Tensor, *, device: torch.device, batch_size: int
) -> list[float]:
    """BI = 1 − mean token cosine(h_in, h_out) of every decoder layer, in layer order.

    One forward pass over the calibration tokens with a pre-hook and a hook per layer; the
    similarities are reduced in float32 on the fly, so memory does not grow with the data.
    """
    _, _, layers = decoder_layers_owner(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}
    handles = []

    def make_pre(i: int) -> Any:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[i] = hidden

        return pre

    def make_post(i: int) -> Any:
        def post(
            _m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any
        ) -> None:
            out = output[0] if isinstance(output, tuple | list) else output
            h_in = inputs.pop(i)
            cos = functional.cosine_similarity(h_in.float(), out.float(), dim=-1)
            sums[i] += float(cos.sum().item())
            counts[i] += cos.numel()

        return post

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(make_pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(make_post(i), with_kwargs=True))
    try:
        run_calibration(model, calib_ids, device=device, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    if bool((counts == 0).any()):
        raise PruneError("some decoder layers saw no calibration tokens")
    return [float(1.0 - s / c) for s, c in zip(sums, counts, strict=True)]


def remove_layers(model: nn.Module, remove: list[int]) -> list[int]:
    """Delete the decoder layers at ``remove`` in place; return the kept original indices.

    Keeps the model self-consistent for saving, reloading and generation: the ModuleList is
    replaced, every module's ``layer_idx`` (the KV-cache slot) is renumbered, and the config's
    ``num_hidden_layers`` and per-layer lists (any list attribute with "layer" in its name and
    one entry per layer, e.g. Qwen2's ``layer_types``) are cut to the kept layers.
    """
    parent, name, layers = decoder_layers_owner(model)
    n_layers = len(layers)
    drop = set(remove)
    keep = [i for i in range(n_layers) if i not in drop]
    if not keep:
        raise PruneError("cannot remove every decoder layer")
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    for new_idx, old_idx in enumerate(keep):
        for module in layers[old_idx].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", new_idx)  # noqa: B010  (nn.Module typing)
    config = getattr(model, "config", None)
    if config is not None:
        # Per-layer lists first: config validation compares them with num_hidden_layers.
        updates: dict[str, Any] = {}
        for key, value in vars(config).items():
            if "layer" in key and isinstance(value, list | tuple) and len(value) == n_layers:
                updates[key] = type(value)(value[i] for i in keep)
        for key, value in updates.items():
            setattr(config, key, value)
        config.num_hidden_layers = len(keep)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and hasattr(parent, "has_sliding_layers"):
            setattr(parent, "has_sliding_layers", "sliding_attention" in layer_types)  # noqa: B010
    return keep


class DepthPruner(Pruner):
    """Remove the lowest-BI decoder layers (see the module docstring for the count rule)."""

    name: ClassVar[str] = "depth"
    structural: ClassVar[bool] = True

    def run(
        self,
        model: nn.Module,
        plan: PrunePlan,
        calib_ids: torch.Tensor,
        *,
        device: torch.device,
        batch_size: int,
    ) -> PruneOutcome:
        """Score layers by BI, remove the plan's number of them, lowest BI first."""
        _, _, layers = decoder_layers_owner(model)
        n_layers = len(layers)
        count = int(plan.shape["layers_removed"])
        sizes = [count_parameters(layer) for layer in layers]
        if n_layers != count + int(plan.shape["layers"]) or set(sizes) != {
            plan.shape["layer_parameters"]
        }:
            raise PruneError(
                f"the model's {n_layers} decoder layers of {sorted(set(sizes))} parameters are "
                f"not the ones its config describes"
            )
        bi = block_influence(model, calib_ids, device=device, batch_size=batch_size)
        order = sorted(range(n_layers), key=lambda i: (bi[i], i))
        remove = sorted(order[:count])
        keep = remove_layers(model, remove)
        return PruneOutcome(
            details={
                "removed_layers": remove,
                "kept_layers": keep,
                "block_influence": [round(x, 6) for x in bi],
                "layer_parameters": sizes,
            }
        )
