"""Width pruning: remove MLP channels and whole GQA groups of attention heads.

Importance, from one forward pass over calibration tokens:
- an MLP channel j scores mean over tokens of |act(gate(x))_j · up(x)_j| (the input of
  ``down_proj``); removing it drops row j of gate/up and column j of down;
- an attention head scores mean over tokens of the L2 norm of its output (its ``head_dim`` slice
  of the input of ``o_proj``); a KV group (one key/value head and the query heads that share
  it) scores the sum of its heads. Whole groups go, so the GQA ratio and ``head_dim`` stay.

Counts (the plan's, ``app.core.pruning``; docs/law.md §1): every layer loses the same number of
KV groups and MLP channels, so the config stays homogeneous and reloads with stock transformers.
The groups removed are attention's proportional share of the removal, rounded to a whole group
and then down to a head count the architecture's config accepts (Llama needs hidden_size
divisible by the head count); MLP channels make up the rest to the nearest channel. Granularity:
one channel in every layer, so ρ lands within half of ``layers × channel parameters ÷ N0`` of
the target. Each layer keeps its own highest-scoring channels and groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from app.core.pruning import PrunePlan
from workers.ml.models import LayerParts, decoder_layers, layer_parts
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner, run_calibration


@dataclass(frozen=True)
class _Shape:
    channels: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads


def _shape(parts: LayerParts, head_dim: int) -> _Shape:
    heads, rem_q = divmod(parts.q.out_features, head_dim)
    kv_heads, rem_k = divmod(parts.k.out_features, head_dim)
    if rem_q or rem_k or kv_heads == 0 or heads % kv_heads:
        raise PruneError(
            f"attention shapes q={parts.q.out_features}, k={parts.k.out_features} do not split "
            f"into heads of head_dim={head_dim} with whole GQA groups"
        )
    return _Shape(
        channels=parts.gate.out_features, heads=heads, kv_heads=kv_heads, head_dim=head_dim
    )


def width_scores(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    head_dim: int,
    device: torch.device,
    batch_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: MLP channel scores ``[channels]`` and attention head scores ``[heads]``.

    Sums over tokens (mean up to a constant, which does not change the ranking), in float32.
    """
    layers = decoder_layers(model)
    parts = [layer_parts(layer) for layer in layers]
    channel_scores = [torch.zeros(p.down.in_features, device=device) for p in parts]
    head_scores = [torch.zeros(p.o.in_features // head_dim, device=device) for p in parts]
    handles = []

    def on_down(i: int) -> Any:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            channel_scores[i] += x.abs().sum(dim=0, dtype=torch.float32)

        return hook

    def on_o(i: int) -> Any:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1] // head_dim, head_dim)
            head_scores[i] += torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).sum(dim=0)

        return hook

    for i, p in enumerate(parts):
        handles.append(p.down.register_forward_pre_hook(on_down(i)))
        handles.append(p.o.register_forward_pre_hook(on_o(i)))
    try:
        run_calibration(model, calib_ids, device=device, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return channel_scores, head_scores


def _rebuilt(
    linear: nn.Linear, *, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> nn.Linear:
    """The projection cut to ``rows`` and ``cols``: its weights are the cut itself (one copy of
    the kept part, no fresh initialisation of a matrix that is overwritten)."""
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=linear.weight.requires_grad)
    new.train(linear.training)
    return new


def _replace_child(holder: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, child in holder.named_children():
        if child is old:
            setattr(holder, name, new)
            return
    raise PruneError(f"{type(old).__name__} is not a direct child of {type(holder).__name__}")


def _set_if_int(module: nn.Module, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, value)


def _prune_layer(
    parts: LayerParts,
    shape: _Shape,
    keep_channels: torch.Tensor,
    keep_groups: torch.Tensor,
) -> None:
    hd, gs = shape.head_dim, shape.group_size
    device = parts.q.weight.device
    offsets = torch.arange(hd, device=device)
    kv_rows = (keep_groups[:, None] * hd + offsets[None, :]).reshape(-1)
    heads = (keep_groups[:, None] * gs + torch.arange(gs, device=device)[None, :]).reshape(-1)
    q_rows = (heads[:, None] * hd + offsets[None, :]).reshape(-1)
    _replace_child(parts.attn, parts.q, _rebuilt(parts.q, rows=q_rows, cols=None))
    _replace_child(parts.attn, parts.k, _rebuilt(parts.k, rows=kv_rows, cols=None))
    _replace_child(parts.attn, parts.v, _rebuilt(parts.v, rows=kv_rows, cols=None))
    _replace_child(parts.attn, parts.o, _rebuilt(parts.o, rows=None, cols=q_rows))
    _replace_child(parts.mlp, parts.gate, _rebuilt(parts.gate, rows=keep_channels, cols=None))
    _replace_child(parts.mlp, parts.up, _rebuilt(parts.up, rows=keep_channels, cols=None))
    _replace_child(parts.mlp, parts.down, _rebuilt(parts.down, rows=None, cols=keep_channels))
    n_groups = int(keep_groups.numel())
    _set_if_int(parts.attn, ("num_heads", "num_attention_heads"), n_groups * gs)
    _set_if_int(parts.attn, ("num_key_value_heads", "num_kv_heads"), n_groups)
    _set_if_int(parts.mlp, ("intermediate_size",), int(keep_channels.numel()))


class WidthPruner(Pruner):
    """Remove MLP channels and KV groups uniformly across layers (see the module docstring)."""

    name: ClassVar[str] = "width"
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
        """Score channels and groups, keep the plan's counts of the best, update the config."""
        config = getattr(model, "config", None)
        layers = decoder_layers(model)
        all_parts = [layer_parts(layer) for layer in layers]
        plan_shape = plan.shape
        head_dim = int(plan_shape["head_dim"])
        keep_g, keep_c = int(plan_shape["kv_heads"]), int(plan_shape["intermediate_size"])
        groups_removed = int(plan_shape["kv_groups_removed"])
        channels_removed = int(plan_shape["channels_removed"])
        shapes = {_shape(p, head_dim) for p in all_parts}
        shape = shapes.pop()
        if (
            shapes
            or (shape.kv_heads, shape.channels)
            != (keep_g + groups_removed, keep_c + channels_removed)
            or shape.group_size != plan_shape["heads_per_group"]
        ):
            raise PruneError(
                "the model's decoder layers do not have the attention and MLP shapes its config "
                "describes"
            )
        channel_scores, head_scores = width_scores(
            model, calib_ids, head_dim=head_dim, device=device, batch_size=batch_size
        )
        kept_groups: list[list[int]] = []
        kept_channels: list[list[int]] = []
        for c_score, h_score in zip(channel_scores, head_scores, strict=True):
            # Taken off the list: once its layer is rebuilt nothing holds the old projections,
            # so the model never holds more than one layer's worth of both.
            parts = all_parts.pop(0)
            g_score = h_score.reshape(shape.kv_heads, shape.group_size).sum(dim=1)
            # topk then sort: the kept units stay in their original order
            groups = torch.topk(g_score, keep_g).indices.sort().values
            channels = torch.topk(c_score, keep_c).indices.sort().values
            _prune_layer(
                parts, shape, channels.to(parts.q.weight.device), groups.to(parts.q.weight.device)
            )
            kept_groups.append(groups.tolist())
            kept_channels.append(channels.tolist())
        if config is not None:
            config.intermediate_size = keep_c
            config.num_attention_heads = keep_g * shape.group_size
            config.num_key_value_heads = keep_g
            config.head_dim = head_dim
        return PruneOutcome(
            details={
                "kv_groups_removed_per_layer": groups_removed,
                "channels_removed_per_layer": channels_removed,
                "kept_kv_groups": kept_groups,
                "kept_channels": kept_channels,
                "num_attention_heads": keep_g * shape.group_size,
                "num_key_value_heads": keep_g,
                "intermediate_size": keep_c,
                "head_dim": head_dim,
            }
        )
