"""2:4 semi-structured sparsity with Wanda scores, on a chosen subset of projections.

In every group of 4 consecutive inputs of each output row, the 2 weights with the lowest
|W|·‖X‖₂ are zeroed (the pattern sparse tensor cores accelerate). Each sparsified projection thus
loses exactly half its weights, so a target ρ = zeroed ÷ N0 is met by choosing WHICH projections
(attention and MLP projections of the decoder layers; never embeddings, head or norms) to
sparsify: the subset whose zeroed count is closest to ρ·N0, found exactly over the few distinct
projection sizes, and among equally close subsets the one that removes the least score mass
(within one size, projections losing the smallest share of their Σ|W|·‖X‖₂ go first).
Granularity: half of the smallest projection, so ρ lands within a quarter of the smallest
projection's weights ÷ N0 of the target. The maximum, every eligible projection at 2:4, is
≈ half of the decoder layers' projection weights ÷ N0; the rule and its message are
``app.core.capacity``'s, shared with the API's check at submission.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
from torch import nn

from app.core.capacity import OutOfReachError, check_2of4_reach, eligible_2of4, zeroable_2of4
from workers.ml.models import prunable_linears
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner
from workers.ml.prune.wanda import input_norms, scores

# Enumerating count combinations is exact but grows as the product of class sizes; past this
# many combinations (unusual: many distinct projection shapes) a greedy fill is used instead.
_MAX_COMBINATIONS = 200_000


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


def choose_subset(sizes: list[int], harms: list[float], target: float) -> list[int]:
    """Indices whose sizes sum closest to ``target``; ties go to the least total harm."""
    classes: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        classes.setdefault(size, []).append(i)
    order = sorted(classes, reverse=True)
    members = [sorted(classes[s], key=lambda i: (harms[i], i)) for s in order]
    prefix = [list(itertools.accumulate((harms[i] for i in m), initial=0.0)) for m in members]
    n_combinations = 1
    for m in members[:-1]:
        n_combinations *= len(m) + 1
    if n_combinations > _MAX_COMBINATIONS:
        chosen: list[int] = []
        total = 0
        for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], harms[i], i)):
            if abs(target - total - sizes[i]) < abs(target - total):
                chosen.append(i)
                total += sizes[i]
        return chosen
    last_size, last_n = order[-1], len(members[-1])
    best: tuple[float, float, tuple[int, ...]] | None = None
    for head in itertools.product(*(range(len(m) + 1) for m in members[:-1])):
        partial = sum(c * s for c, s in zip(head, order, strict=False))
        last = min(max(round((target - partial) / last_size), 0), last_n)
        counts = (*head, last)
        gap = abs(target - partial - last * last_size)
        harm = sum(prefix[k][c] for k, c in enumerate(counts))
        if best is None or (gap, harm) < (best[0], best[1]):
            best = (gap, harm, counts)
    assert best is not None
    return [i for k, c in enumerate(best[2]) for i in members[k][:c]]


class SemiStructuredPruner(Pruner):
    """Wanda 2:4 on the subset of projections that gets closest to the target ρ."""

    name: ClassVar[str] = "2:4"
    structural: ClassVar[bool] = False

    def run(
        self,
        model: nn.Module,
        target_rho: float,
        calib_ids: torch.Tensor,
        *,
        n0: int,
        device: torch.device,
        batch_size: int,
    ) -> PruneOutcome:
        """Score all eligible projections, choose the subset, return their 2:4 keep-masks."""
        linears = {
            name: lin
            for name, lin in prunable_linears(model).items()
            if eligible_2of4(lin.in_features)
        }
        if not linears:
            raise PruneError("no projection has a multiple of 4 inputs; 2:4 is not applicable")
        zeroable = [
            zeroable_2of4([(lin.out_features, lin.in_features)]) for lin in linears.values()
        ]
        max_rho = sum(zeroable) / n0
        try:
            check_2of4_reach(target_rho, max_rho)
        except OutOfReachError as exc:
            raise PruneError(str(exc)) from None
        norms = input_norms(model, calib_ids, device=device, batch_size=batch_size)
        masks: dict[str, torch.Tensor] = {}
        harms: list[float] = []
        for name, lin in linears.items():
            keep, lost = mask_2_4(scores(lin.weight, norms[name]))
            masks[f"{name}.weight"] = keep
            harms.append(lost)
        names = list(linears)
        chosen = sorted(choose_subset(zeroable, harms, target_rho * n0))
        chosen_names = [names[i] for i in chosen]
        return PruneOutcome(
            masks={f"{n}.weight": masks[f"{n}.weight"] for n in chosen_names},
            details={
                "sparsified_layers": chosen_names,
                "max_rho": max_rho,
                "score_share_removed": {names[i]: round(harms[i], 6) for i in chosen},
            },
        )
