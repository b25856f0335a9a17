"""Unstructured sparsity with Wanda scores, the same fraction in every output row.

Every attention and MLP projection of the decoder layers (never embeddings, head or norms) loses
the same fraction s of its weights, chosen per output row by lowest |W|·‖X‖₂ (Wanda's
comparison group). s = ρ·N0 ÷ (all projection weights); each projection zeroes round(s·numel)
weights, spread over its rows as evenly as whole weights allow, so ρ lands within half a weight
per projection of the target. ρ at or above the projections' share of N0 (every weight gone) is
a PruneError stating that maximum.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from workers.ml.models import prunable_linears
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner
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
        target_rho: float,
        calib_ids: torch.Tensor,
        *,
        n0: int,
        device: torch.device,
        batch_size: int,
    ) -> PruneOutcome:
        """Score every projection and zero the same fraction of each of its rows."""
        linears = prunable_linears(model)
        total = sum(lin.weight.numel() for lin in linears.values())
        max_rho = total / n0
        fraction = target_rho * n0 / total
        if fraction >= 1.0:
            raise PruneError(
                f"unstructured sparsity must stay below rho={max_rho:.4f} (every decoder "
                f"projection weight of this model); requested rho={target_rho:.4f}"
            )
        norms = input_norms(model, calib_ids, device=device, batch_size=batch_size)
        masks: dict[str, torch.Tensor] = {}
        for name, lin in linears.items():
            n_zero = round(fraction * lin.weight.numel())
            masks[f"{name}.weight"] = row_mask(scores(lin.weight, norms[name]), n_zero)
        return PruneOutcome(
            masks=masks,
            details={
                "sparsified_layers": list(linears),
                "fraction_per_layer": fraction,
                "max_rho": max_rho,
            },
        )
