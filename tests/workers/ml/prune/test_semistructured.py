"""2:4 Wanda: the pattern, the layer choice that meets ρ, the maximum, masks through training."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from workers.ml.models import count_nonzero, count_parameters, prunable_linears
from workers.ml.prune import PruneError, apply_masks, prune
from workers.ml.prune.semistructured import choose_subset, least_harm, mask_2_4


def _groups_have_two_zeros(weight: torch.Tensor) -> bool:
    zeros = (weight.view(weight.shape[0], -1, 4) == 0).sum(dim=-1)
    return bool((zeros >= 2).all())


def test_mask_keeps_the_two_highest_of_every_group_of_four() -> None:
    score = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 1.0, 2.0, 0.0]])
    keep, lost = mask_2_4(score)
    assert keep.tolist() == [[False, True, True, False, True, False, True, False]]
    assert lost == pytest.approx((0.1 + 0.2 + 1.0 + 0.0) / score.sum().item())


def test_subset_choice_is_exactly_closest_where_greedy_is_not() -> None:
    # Greedy largest-first would take 6 then stop at 6 + 1 = 7 (gap 1); 4 + 4 = 8 is exact.
    chosen = choose_subset([6, 4, 4, 1], [0.0, 0.0, 0.0, 0.0], 8.0)
    assert sorted(chosen) == [1, 2]
    # Equal gaps: the lower-harm member of a size class goes first.
    assert choose_subset([5, 5], [0.9, 0.1], 5.0) == [1]


def test_within_a_size_the_least_harmed_projections_go_first() -> None:
    # The plan says how many of each size (app.core.pruning.closest_counts); harm says which.
    assert least_harm([5, 5], [0.9, 0.1], {5: 1}) == [1]
    assert least_harm([6, 4, 4, 1, 4], [0.0, 0.3, 0.1, 0.0, 0.2], {6: 0, 4: 2, 1: 1}) == [2, 3, 4]
    with pytest.raises(PruneError, match="3 projections of 4 zeroed weights planned, 2 exist"):
        least_harm([4, 4], [0.0, 0.0], {4: 3})


@pytest.mark.parametrize("rho", [0.1, 0.25, 0.4])
def test_two_four_reaches_rho_and_survives_training_and_reload(
    tiny_model: PreTrainedModel,
    calib_ids: torch.Tensor,
    *,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
    reload: Callable[[PreTrainedModel], PreTrainedModel],
    rho: float,
) -> None:
    n0 = count_parameters(tiny_model)
    result = prune(tiny_model, "2:4", rho, calib_ids)
    # Tolerance: a k/v projection (64 x 32) is the smallest unit and zeroes 1024 weights, so the
    # closest subset is within half of that.
    assert abs(result.rho - rho) <= 1024 / (2 * n0)
    linears = prunable_linears(tiny_model)
    assert result.masks and all(k.removesuffix(".weight") in linears for k in result.masks)
    assert sorted(result.details["sparsified_layers"]) == sorted(
        k.removesuffix(".weight") for k in result.masks
    )
    params = dict(tiny_model.named_parameters())
    # A simulated post-training step moves every weight; the masks put the zeros back.
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    tiny_model.train()
    tiny_model(input_ids=calib_ids, labels=calib_ids).loss.backward()
    optimizer.step()
    tiny_model.train(False)
    name = next(iter(result.masks))
    assert not _groups_have_two_zeros(params[name].detach())  # the step really broke the pattern
    apply_masks(tiny_model, result.masks)
    for name in result.masks:
        assert _groups_have_two_zeros(params[name].detach()), name
    loss = lm_loss(tiny_model, eval_batch)
    assert torch.isfinite(torch.tensor(loss))
    reloaded = reload(tiny_model)
    assert lm_loss(reloaded, eval_batch) == pytest.approx(loss, abs=1e-5)
    reloaded_params = dict(reloaded.named_parameters())
    assert all(_groups_have_two_zeros(reloaded_params[n].detach()) for n in result.masks)


def test_two_four_above_its_maximum_states_the_maximum(
    tiny_qwen2: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    n0 = count_parameters(tiny_qwen2)
    max_rho = sum(lin.weight.numel() for lin in prunable_linears(tiny_qwen2).values()) / 2 / n0
    nonzero = count_nonzero(tiny_qwen2)
    with pytest.raises(PruneError, match=f"at most rho={max_rho:.4f}"):
        prune(tiny_qwen2, "2:4", max_rho + 0.01, calib_ids)
    assert count_nonzero(tiny_qwen2) == nonzero  # refused before touching a weight
    result = prune(tiny_qwen2, "2:4", max_rho, calib_ids)
    assert len(result.masks) == 4 * 7
    assert result.rho == pytest.approx(max_rho, abs=1e-9)


def test_two_four_scores_use_input_norms(calib_ids: torch.Tensor) -> None:
    from workers.ml.models import build_tiny_model

    model = build_tiny_model("llama")
    down = prunable_linears(model)["model.layers.0.mlp.down_proj"]
    with torch.no_grad():
        down.weight.fill_(1.0)  # equal |W|: only ‖X‖ can decide which inputs stay
    captured: list[torch.Tensor] = []
    handle = down.register_forward_pre_hook(lambda _m, a: captured.append(a[0].detach().clone()))
    result = prune(model, "2:4", 0.4, calib_ids)
    handle.remove()
    norms = torch.cat([c.reshape(-1, 128) for c in captured]).norm(dim=0)
    keep = result.masks["model.layers.0.mlp.down_proj.weight"][0]
    expected, _ = mask_2_4(norms[None, :])
    assert torch.equal(keep, expected[0])
