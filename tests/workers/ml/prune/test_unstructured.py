"""Unstructured Wanda: the same fraction per row, lowest scores first, any ρ below the maximum."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from workers.ml.models import count_parameters, prunable_linears
from workers.ml.prune import PruneError, prune
from workers.ml.prune.unstructured import row_mask


def test_row_mask_zeroes_the_lowest_scores_evenly_over_rows() -> None:
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.7, 0.1, 0.9], [1.0, 2.0, 3.0, 4.0]])
    keep = row_mask(score, 4)
    assert (~keep).sum(dim=1).tolist() == [2, 1, 1]
    assert keep.tolist() == [
        [True, False, True, False],
        [True, True, False, True],
        [False, True, True, True],
    ]


@pytest.mark.parametrize("rho", [0.15, 0.5, 0.75])
def test_unstructured_reaches_rho_and_reloads(
    tiny_model: PreTrainedModel,
    calib_ids: torch.Tensor,
    *,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
    reload: Callable[[PreTrainedModel], PreTrainedModel],
    rho: float,
) -> None:
    n0 = count_parameters(tiny_model)
    result = prune(tiny_model, "unstructured", rho, calib_ids)
    # Tolerance: each of the 28 projections rounds its zero count to a whole weight.
    assert abs(result.rho - rho) <= 28 * 0.5 / n0
    for name, mask in result.masks.items():
        per_row = (~mask).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1, name
    loss = lm_loss(tiny_model, eval_batch)
    assert torch.isfinite(torch.tensor(loss))
    assert lm_loss(reload(tiny_model), eval_batch) == pytest.approx(loss, abs=1e-5)


def test_unstructured_at_or_above_every_projection_weight_is_rejected(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    n0 = count_parameters(tiny_llama)
    max_rho = sum(lin.weight.numel() for lin in prunable_linears(tiny_llama).values()) / n0
    with pytest.raises(PruneError, match=f"below rho={max_rho:.4f}"):
        prune(tiny_llama, "unstructured", max_rho, calib_ids)
