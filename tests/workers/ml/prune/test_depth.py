"""Depth pruning: block influence, ρ within one layer's granularity, a consistent model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from workers.ml.models import build_tiny_model, count_parameters, decoder_layers, layer_parts
from workers.ml.prune import PruneError, prune
from workers.ml.prune.depth import block_influence


@pytest.mark.parametrize("rho", [0.2, 0.45])
def test_depth_reaches_rho_within_half_a_layer_and_reloads(
    tiny_model: PreTrainedModel,
    calib_ids: torch.Tensor,
    *,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
    reload: Callable[[PreTrainedModel], PreTrainedModel],
    rho: float,
) -> None:
    n0 = count_parameters(tiny_model)
    layer_share = count_parameters(decoder_layers(tiny_model)[0]) / n0
    bi = block_influence(tiny_model, calib_ids, device=torch.device("cpu"), batch_size=4)
    result = prune(tiny_model, "depth", rho, calib_ids)
    # Tolerance: one layer is the unit of removal, so the closest count is within half a share.
    assert abs(result.rho - rho) <= layer_share / 2
    removed = result.details["removed_layers"]
    assert sorted(removed) == sorted(sorted(range(4), key=lambda i: bi[i])[: len(removed)])
    assert (
        tiny_model.config.num_hidden_layers == 4 - len(removed) == len(decoder_layers(tiny_model))
    )
    for idx, layer in enumerate(decoder_layers(tiny_model)):
        assert layer_parts(layer).attn.layer_idx == idx
    loss = lm_loss(tiny_model, eval_batch)
    assert torch.isfinite(torch.tensor(loss))
    reloaded = reload(tiny_model)
    assert lm_loss(reloaded, eval_batch) == pytest.approx(loss, abs=1e-5)
    out = reloaded.generate(eval_batch[:1, :6], max_new_tokens=4, do_sample=False)  # type: ignore[operator]
    assert out.shape == (1, 10)


def test_depth_cuts_qwen2_per_layer_attention_types(
    calib_ids: torch.Tensor, reload: Callable[[PreTrainedModel], PreTrainedModel]
) -> None:
    model = build_tiny_model(
        "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2
    )
    types = list(model.config.layer_types)
    assert types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    result = prune(model, "depth", 0.2, calib_ids)
    kept = result.details["kept_layers"]
    assert model.config.layer_types == [types[i] for i in kept]
    reloaded = reload(model)
    assert reloaded.config.layer_types == model.config.layer_types
    out = reloaded.generate(calib_ids[:1, :5], max_new_tokens=3, do_sample=False)  # type: ignore[operator]
    assert out.shape[1] == 8


def test_depth_above_its_maximum_states_the_maximum(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    # 3 of 4 layers at most: 3 * 36992 / 180800 = 0.6138
    with pytest.raises(PruneError, match=r"at most rho=0\.6138"):
        prune(tiny_llama, "depth", 0.9, calib_ids)
