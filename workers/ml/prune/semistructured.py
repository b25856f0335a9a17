"""2:4 semi-structured sparsity with Wanda scores, on a chosen subset of projections.

In every group of 4 consecutive inputs of each output row, the 2 weights with the lowest
|W|·‖X‖₂ are zeroed (the pattern sparse tensor cores accelerate). Each sparsified projection thus
loses exactly half its weights, so a target ρ = zeroed ÷ N0 is met by choosing how many
projections of each size (attention and MLP projections of the decoder layers; never embeddings,
head or norms) to sparsify: the plan's counts (``app.core.pruning``), whose zeroed total is the
closest to ρ·N0. Within one size, the projections losing the smallest share of their
Σ|W|·‖X‖₂ go first. Granularity: half of the smallest projection, so ρ lands within a quarter of
the smallest projection's weights ÷ N0 of the target. The maximum, every eligible projection at
2:4, is ≈ half of the decoder layers' projection weights ÷ N0; the API refuses a target above it
at submission with the same plan and message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from app.core.pruning import PrunePlan, closest_counts, eligible_2of4
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner, projections
from workers.ml.prune.wanda import input_norms, scores


def mask_2_4(score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Keep-mask with the 2 highest of every 4 consecutive inputs per row; share of score lost."""
    rows, cols = score.shape
    groups = score.view(rows, cols // 4, 4)
    top = groups.topk(2, dim=-1)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=score.device)
    keep.scatter_(-1, top.indices, True)
    total = float(score.sum().item())
    lost = total - float(top.values.sum().item())
    return keep.view(rows, cols), (lost / total if total > 0 else 0.0)


def least_harm(
    sizes: Sequence[int], harms: Sequence[float], counts: Mapping[int, int]
) -> list[int]:
    """Indices to sparsify: ``counts[size]`` of each size, the lowest-harm ones of that size."""
    chosen: list[int] = []
    for size, count in counts.items():
        members = sorted((i for i, s in enumerate(sizes) if s == size), key=lambda i: (harms[i], i))
        if len(members) < count:
            raise PruneError(
                f"{count} projections of {size} zeroed weights planned, {len(members)} exist"
            )
        chosen.extend(members[:count])
    return sorted(chosen)


def choose_subset(sizes: Sequence[int], harms: Sequence[float], target: float) -> list[int]:
    """Indices whose sizes sum closest to ``target``: the plan's rule (how many of each size,
    ``app.core.pruning.closest_counts``), then the least harmed of each size."""
    classes = sorted(set(sizes), reverse=True)
    counts = closest_counts(classes, [sizes.count(size) for size in classes], target)
    return least_harm(sizes, harms, dict(zip(classes, counts, strict=True)))


class SemiStructuredPruner(Pruner):
    """Wanda 2:4 on the plan's number of projections of each size, the least harmed ones."""

    name: ClassVar[str] = "2:4"
    structural: ClassVar[bool] = False

    def run(
        self,
        model: nn.Module,
        plan: PrunePlan,
        calib_ids: torch.Tensor,
        *,
        device: torch.device,
        batch_size: int,
    ) -> PruneOutcome:
        """Score all eligible projections, take the plan's counts, return their 2:4 keep-masks."""
        linears = {
            p.name: p.linear for p in projections(model) if eligible_2of4(p.linear.in_features)
        }
        sizes = [lin.out_features * lin.in_features // 2 for lin in linears.values()]
        planned = {int(c["zeroed_each"]): int(c["of"]) for c in plan.shape["projections_2of4"]}
        found = {size: sizes.count(size) for size in set(sizes)}
        if found != planned:
            raise PruneError(
                f"the model's projections ({found} by zeroed weights) are not the ones its "
                f"config describes ({planned})"
            )
        norms = input_norms(model, calib_ids, device=device, batch_size=batch_size)
        masks: dict[str, torch.Tensor] = {}
        harms: list[float] = []
        for name, lin in linears.items():
            keep, lost = mask_2_4(scores(lin.weight, norms[name]))
            masks[f"{name}.weight"] = keep
            harms.append(lost)
        names = list(linears)
        counts = {int(c["zeroed_each"]): int(c["count"]) for c in plan.shape["projections_2of4"]}
        chosen = least_harm(sizes, harms, counts)
        chosen_names = [names[i] for i in chosen]
        return PruneOutcome(
            masks={f"{n}.weight": masks[f"{n}.weight"] for n in chosen_names},
            details={
                "sparsified_layers": chosen_names,
                "max_rho": plan.shape["max_rho"],
                "score_share_removed": {names[i]: round(harms[i], 6) for i in chosen},
            },
        )
