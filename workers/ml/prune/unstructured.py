"""Unstructured sparsity with Wanda scores, the same fraction in every output row.

Every attention and MLP projection of the decoder layers (never embeddings, head or norms) loses
the same fraction s of its weights, chosen per output row by lowest |W|·‖X‖₂ (Wanda's
comparison group). s = ρ·N0 ÷ (all projection weights); each projection zeroes round(s·numel)
weights (the plan's counts, ``app.core.pruning``), spread over its rows as evenly as whole
weights allow, so ρ lands within half a weight per projection of the target. ρ at or above the
projections' share of N0 (every weight gone) is a PruneError stating that maximum.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from app.core.pruning import PrunePlan
from workers.ml.prune.base import PruneOutcome, Pruner, projections
from workers.ml.prune.wanda import input_norms, scores


def row_mask(score: torch.Tensor, n_zero: int) -> torch.Tensor:
    """Keep-mask zeroing ``n_zero`` weights in total, the lowest-scoring ones of each row.

    Rows get ``n_zero // rows`` zeros each and the first ``n_zero % rows`` rows one more.
    """
    rows, cols = score.shape
    per_row = torch.full((rows,), n_zero // rows, device=score.device)
    per_row[: n_zero % rows] += 1
    order = score.argsort(dim=1)
    ranks = torch.arange(cols, device=score.device)[None, :]
    keep = torch.empty(rows, cols, dtype=torch.bool, device=score.device)
    keep.scatter_(1, order, ranks >= per_row[:, None])
    return keep


class UnstructuredPruner(Pruner):
    """Wanda per output row, uniform fraction over all projections."""

    name: ClassVar[str] = "unstructured"
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
        """Score every projection and zero the plan's count of each, evenly over its rows."""
        zeros = plan.shape["zeros_per_projection"]
        found = projections(model)
        norms = input_norms(model, calib_ids, device=device, batch_size=batch_size)
        masks: dict[str, torch.Tensor] = {}
        for p in found:
            score = scores(p.linear.weight, norms[p.name])
            masks[f"{p.name}.weight"] = row_mask(score, int(zeros[p.role]))
        return PruneOutcome(
            masks=masks,
            details={
                "sparsified_layers": [p.name for p in found],
                "fraction_per_layer": plan.shape["fraction"],
                "max_rho": plan.shape["max_rho"],
            },
        )
