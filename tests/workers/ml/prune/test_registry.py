"""The prune entry point: registry, argument checks, measured ρ and mask application."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedModel

from workers.ml.models import count_nonzero, count_parameters, prunable_linears
from workers.ml.prune import PRUNERS, PruneError, apply_masks, prune


@pytest.mark.parametrize("method", ["depth", "width", "2:4", "unstructured"])
def test_each_method_removes_or_zeroes_as_its_kind_says(
    method: str, calib_ids: torch.Tensor
) -> None:
    from workers.ml.models import build_tiny_model

    model = build_tiny_model("llama")
    before = count_parameters(model)
    result = prune(model, method, 0.2, calib_ids)
    assert result.rho > 0.05
    if PRUNERS[method].structural:  # parameters removed: the model shrinks, no masks
        assert count_parameters(model) < before and not result.masks
    else:  # weights zeroed in place: same shapes, kept by masks through post-training
        assert count_parameters(model) == before and result.masks
        assert count_nonzero(model) < before


def test_unknown_method_is_a_prune_error(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    with pytest.raises(PruneError, match="unknown pruning method 'magnitude'"):
        prune(tiny_llama, "magnitude", 0.2, calib_ids)


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_rho_outside_the_open_unit_interval_is_rejected(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor, rho: float
) -> None:
    before = count_parameters(tiny_llama)
    with pytest.raises(PruneError, match=r"rho must be a fraction in \(0, 1\)"):
        prune(tiny_llama, "depth", rho, calib_ids)
    assert count_parameters(tiny_llama) == before


def test_calibration_ids_must_be_two_dimensional(tiny_llama: PreTrainedModel) -> None:
    with pytest.raises(PruneError, match="n_sequences, seq_len"):
        prune(tiny_llama, "2:4", 0.1, torch.arange(10))


def test_rho_is_measured_from_the_model_not_copied_from_the_request(
    tiny_qwen2: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    n0 = count_parameters(tiny_qwen2)
    nonzero = count_nonzero(tiny_qwen2)  # Qwen2's zero-initialised biases are not "pruned"
    result = prune(tiny_qwen2, "unstructured", 0.3, calib_ids)
    assert result.n0 == n0
    assert result.n_after == count_nonzero(tiny_qwen2)
    assert result.rho == (nonzero - result.n_after) / n0
    assert result.rho != 0.3 and result.rho == pytest.approx(0.3, abs=1e-3)


def test_apply_masks_zeroes_only_masked_entries(tiny_llama: PreTrainedModel) -> None:
    name = next(iter(prunable_linears(tiny_llama))) + ".weight"
    param = dict(tiny_llama.named_parameters())[name]
    mask = torch.ones_like(param, dtype=torch.bool)
    mask[0, :5] = False
    before = param.detach().clone()
    apply_masks(tiny_llama, {name: mask})
    assert torch.all(param[0, :5] == 0)
    assert torch.equal(param[mask], before[mask])


def test_apply_masks_rejects_unknown_parameter(tiny_llama: PreTrainedModel) -> None:
    with pytest.raises(KeyError, match=r"no\.such\.weight"):
        apply_masks(tiny_llama, {"no.such.weight": torch.ones(1, dtype=torch.bool)})


def test_the_registry_and_the_plan_know_the_same_methods() -> None:
    from app.core.pruning import METHODS

    assert sorted(PRUNERS) == sorted(METHODS)


@pytest.mark.parametrize("method", ["depth", "width", "2:4", "unstructured"])
@pytest.mark.parametrize("rho", [0.15, 0.3])
def test_the_measured_rho_is_the_plans_rho(
    tiny_model: PreTrainedModel, calib_ids: torch.Tensor, method: str, rho: float
) -> None:
    from app.core.pruning import plan_pruning

    # The plan the API makes from config.json at submission, before the worker loads anything.
    plan = plan_pruning(tiny_model.config.to_dict(), method, rho)
    result = prune(tiny_model, method, rho, calib_ids)
    assert result.plan == plan
    assert result.rho == plan.rho and result.n0 == plan.n0
    if PRUNERS[method].structural:
        assert result.n_after == plan.n_after == count_parameters(tiny_model)
        config = tiny_model.config
        assert config.num_hidden_layers == plan.shape["layers"]
        assert config.num_attention_heads == plan.shape["attention_heads"]
        assert config.num_key_value_heads == plan.shape["kv_heads"]
        assert config.intermediate_size == plan.shape["intermediate_size"]


def test_a_model_its_config_does_not_describe_is_refused_untouched(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    tiny_llama.config.intermediate_size = 96  # the weights still have 128 channels
    before = count_parameters(tiny_llama)
    with pytest.raises(PruneError, match=r"config describes .* but the model has"):
        prune(tiny_llama, "width", 0.2, calib_ids)
    assert count_parameters(tiny_llama) == before


def test_a_config_the_plan_cannot_read_is_a_prune_error(
    tiny_llama: PreTrainedModel, calib_ids: torch.Tensor
) -> None:
    tiny_llama.config.num_key_value_heads = 3  # 4 heads do not split into 3 groups
    with pytest.raises(PruneError, match="cannot plan depth pruning for this model's config"):
        prune(tiny_llama, "depth", 0.2, calib_ids)
