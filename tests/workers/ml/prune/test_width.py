"""Width pruning: channels and whole KV groups removed, config updated, function preserved."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel

from workers.ml.models import build_tiny_model, count_parameters, decoder_layers, layer_parts
from workers.ml.prune import PruneError, prune
from workers.ml.prune import width as width_module


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.55])
def test_width_reaches_rho_within_one_channel_per_layer_and_reloads(
    tiny_model: PreTrainedModel,
    calib_ids: torch.Tensor,
    *,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
    reload: Callable[[PreTrainedModel], PreTrainedModel],
    rho: float,
) -> None:
    n0 = count_parameters(tiny_model)
    result = prune(tiny_model, "width", rho, calib_ids)
    # Tolerance: the final adjustment is one MLP channel in each of the 4 layers
    # (gate row + up row + down column = 3 * hidden parameters), so half of that.
    assert abs(result.rho - rho) <= 4 * 3 * 64 / (2 * n0)
    config = tiny_model.config
    assert config.head_dim == 16
    assert config.num_attention_heads == 2 * config.num_key_value_heads  # GQA ratio kept
    for layer in decoder_layers(tiny_model):
        parts = layer_parts(layer)
        assert parts.q.out_features == config.num_attention_heads * 16
        assert parts.k.out_features == parts.v.out_features == config.num_key_value_heads * 16
        assert parts.gate.out_features == parts.down.in_features == config.intermediate_size
    loss = lm_loss(tiny_model, eval_batch)
    assert torch.isfinite(torch.tensor(loss))
    reloaded = reload(tiny_model)
    assert lm_loss(reloaded, eval_batch) == pytest.approx(loss, abs=1e-5)
    out = reloaded.generate(eval_batch[:1, :6], max_new_tokens=4, do_sample=False)  # type: ignore[operator]
    assert out.shape == (1, 10)


def test_width_pruned_model_equals_dense_model_with_those_units_silenced(
    tiny_model: PreTrainedModel, calib_ids: torch.Tensor, eval_batch: torch.Tensor
) -> None:
    dense = copy.deepcopy(tiny_model)
    result = prune(tiny_model, "width", 0.3, calib_ids)
    assert result.details["kv_groups_removed_per_layer"] == 1
    # Silence the removed units in the dense copy: a removed MLP channel contributes nothing
    # once its down_proj column is zero, a removed head once its o_proj columns are zero.
    with torch.no_grad():
        for layer, groups, channels in zip(
            decoder_layers(dense),
            result.details["kept_kv_groups"],
            result.details["kept_channels"],
            strict=True,
        ):
            parts = layer_parts(layer)
            drop_c = [c for c in range(128) if c not in channels]
            parts.down.weight[:, drop_c] = 0.0
            for g in range(2):
                if g not in groups:
                    parts.o.weight[:, g * 32 : (g + 1) * 32] = 0.0
        expected = dense(input_ids=eval_batch).logits
        got = tiny_model(input_ids=eval_batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_width_keeps_the_highest_scoring_channels(calib_ids: torch.Tensor) -> None:
    from workers.ml.prune.width import width_scores

    model = build_tiny_model("llama")
    channel_scores, _ = width_scores(
        model, calib_ids, head_dim=16, device=torch.device("cpu"), batch_size=8
    )
    result = prune(model, "width", 0.1, calib_ids)
    kept = result.details["kept_channels"][0]
    floor = channel_scores[0][kept].min()
    dropped = [c for c in range(128) if c not in kept]
    assert bool((channel_scores[0][dropped] <= floor).all())


def test_width_only_uses_head_counts_the_llama_config_accepts(
    calib_ids: torch.Tensor, reload: Callable[[PreTrainedModel], PreTrainedModel]
) -> None:
    # 8 heads of 8 dims in 4 KV groups: keeping 3 groups (6 heads) would break Llama's
    # hidden_size % num_attention_heads == 0 check on reload.
    model = build_tiny_model("llama", num_heads=8, num_kv_heads=4)
    result = prune(model, "width", 0.25, calib_ids)
    assert 64 % model.config.num_attention_heads == 0
    assert result.details["num_key_value_heads"] in (1, 2, 4)
    assert reload(model).config.num_attention_heads == model.config.num_attention_heads


def test_width_above_its_maximum_is_a_prune_error(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    with pytest.raises(PruneError, match="width pruning can remove at most"):
        prune(tiny_llama, "width", 0.95, calib_ids)


def test_width_holds_one_layers_old_projections_at_a_time(
    tiny_model: PreTrainedModel, calib_ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 8B a whole model's old projections beside the new ones would be ~19 GiB more on the
    device that prepares the job: each layer's old projections must be gone once the next layer
    is cut."""
    old = [
        weakref.ref(module)
        for layer in decoder_layers(tiny_model)
        for module in vars(layer_parts(layer)).values()
        if isinstance(module, torch.nn.Linear)
    ]
    per_layer = len(old) // len(decoder_layers(tiny_model))
    alive: list[int] = []
    cut = width_module._prune_layer

    def counting(*args: object, **kwargs: object) -> None:
        cut(*args, **kwargs)  # type: ignore[arg-type]
        gc.collect()
        done = len(alive) + 1
        # The layers already cut: at most the one just cut still holds its old projections.
        alive.append(sum(ref() is not None for ref in old[: done * per_layer]))

    monkeypatch.setattr(width_module, "_prune_layer", counting)
    prune(tiny_model, "width", 0.25, calib_ids)
    assert len(alive) == len(decoder_layers(tiny_model))
    assert max(alive) <= per_layer, alive
