"""Training FLOPs and expected throughput (app/core/flops.py)."""

from __future__ import annotations

import pytest

from app.core.flops import (
    expected_throughput,
    flops_per_token,
    hardware_flops_per_token,
    lora_adapter_params,
    peak_bf16_tflops,
    recipe_flops_per_token,
    recipe_flops_per_token_of_params,
)
from app.core.memory import ModelShape
from benchmarks.memory_model import SHAPES
from tests.shapes import LLAMA_31_8B


def test_the_count_is_six_n_plus_the_attention_matrix() -> None:
    # Untied: the input embedding is a lookup; the head is a matmul.
    shape = ModelShape(
        "s", hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=10, tied=False
    )
    per_layer = 8 * 8 + 8 * 4 * 2 + 8 * 8 + 3 * 8 * 16  # q, k and v, o, the MLP
    norms = 2 * 2 * 8 + 8  # two a layer and the last: a few weights, counted in N as well
    n = 2 * per_layer + 10 * 8 + norms  # the layers, the head and the norms
    assert flops_per_token(shape, 32) == 6 * n + 12 * 2 * 8 * 32


def test_llama_8b_at_2048_tokens_is_about_six_times_its_parameters() -> None:
    shape = ModelShape.from_config(LLAMA_31_8B)
    per_token = flops_per_token(shape, 2048)
    # 6 x 7.5B matmul parameters (the 0.5B input embedding is a lookup) + 3.2 GFLOP attention.
    assert per_token == pytest.approx(48.3e9, rel=0.01)
    assert hardware_flops_per_token(shape, 2048, checkpointing=True) == pytest.approx(
        per_token * 4 / 3
    )
    assert hardware_flops_per_token(shape, 2048, checkpointing=False) == per_token


def test_throughput_is_mfu_times_peak_over_flops_and_scales_with_devices() -> None:
    shape = ModelShape.from_config(LLAMA_31_8B)
    one = expected_throughput(shape, seq_len=2048, devices=1, mfu=0.35, peak_tflops=989.0)
    eight = expected_throughput(shape, seq_len=2048, devices=8, mfu=0.35, peak_tflops=989.0)
    assert one.per_device == pytest.approx(0.35 * 989e12 / flops_per_token(shape, 2048))
    assert eight.total == pytest.approx(8 * one.total)
    assert one.hours_for(one.total * 3600) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expected_throughput(shape, seq_len=2048, devices=1, mfu=1.5, peak_tflops=989.0)


def test_flops_per_token_is_six_n_plus_the_attention_term() -> None:
    shape = SHAPES["Llama-3.2-1B"]
    # Tied: the shared embedding is the head's matmul, counted once.
    assert shape.matmul_params == shape.n_params
    expected = 6 * 1_235_814_400 + 12 * 16 * 2048 * 2048
    assert flops_per_token(shape, 2048) == expected
    # The attention term grows with the sequence, the parameter term does not.
    assert flops_per_token(shape, 4096) - flops_per_token(shape, 2048) == (12 * 16 * 2048 * 2048)


def test_an_untied_input_embedding_is_a_lookup_not_a_matmul() -> None:
    shape = SHAPES["Llama-3.1-8B"]
    assert shape.matmul_params == shape.n_params - 128256 * 4096
    assert flops_per_token(shape, 1) == 6 * shape.matmul_params + 12 * 32 * 4096


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_is_looked_up_by_device_name(name: str, tflops: float | None) -> None:
    assert peak_bf16_tflops(name) == tflops


SMALL = ModelShape(
    "s", hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=10, tied=False
)


def test_lora_adapters_are_rank_times_in_plus_out_per_target_and_layer() -> None:
    # q: 8 -> 8, v: 8 -> 4 (one KV head of width 4), down: 16 -> 8; two layers.
    assert lora_adapter_params(SMALL, 4, ["q_proj"]) == 2 * 4 * (8 + 8)
    assert lora_adapter_params(SMALL, 4, ["v_proj", "down_proj"]) == 2 * 4 * ((8 + 4) + (16 + 8))
    with pytest.raises(ValueError, match="lm_head"):
        lora_adapter_params(SMALL, 4, ["lm_head"])


def test_the_recipes_flops_per_token_follow_their_formulas() -> None:
    n, s = SMALL.matmul_params, 32
    attention = 12 * 2 * 8 * s  # 12·L·d·s
    assert recipe_flops_per_token("full", SMALL, s) == flops_per_token(SMALL, s)
    # LoRA: forward 2N, backward through activations 2N, attention whole, adapters 6·N_a.
    assert recipe_flops_per_token("lora", SMALL, s, adapter_params=100) == (
        4 * n + attention + 6 * 100
    )
    dense = ModelShape(
        "d", hidden=8, layers=4, heads=2, kv_heads=1, intermediate=32, vocab=10, tied=False
    )
    # Distill: the student's full training plus the teacher's forward (2·N0 + 4·L0·d0·s).
    assert recipe_flops_per_token("distill", SMALL, s, teacher=dense) == (
        6 * n + attention + 2 * dense.matmul_params + 4 * 4 * 8 * s
    )
    # LoRA on a masked model forms its masked update whole: 2 FLOPs a weight (6 with dropout).
    adapted = SMALL.projection_weights
    assert recipe_flops_per_token("lora", SMALL, s, masked_adapted=adapted) == (
        4 * n + attention + 2 * adapted
    )
    assert recipe_flops_per_token("lora", SMALL, s, masked_adapted=adapted, dropout=True) == (
        4 * n + attention + 6 * adapted
    )
    with pytest.raises(ValueError, match="teacher"):
        recipe_flops_per_token("distill", SMALL, s)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_flops_per_token("qlora", SMALL, s)


def test_on_an_8b_model_lora_costs_about_two_thirds_and_distill_more_than_full() -> None:
    dense = ModelShape.from_config(LLAMA_31_8B)
    full = recipe_flops_per_token("full", dense, 2048)
    adapters = lora_adapter_params(dense, 16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    lora = recipe_flops_per_token("lora", dense, 2048, adapter_params=adapters)
    distill = recipe_flops_per_token("distill", dense, 2048, teacher=dense)
    assert 0.6 < lora / full < 0.72
    assert distill / full == pytest.approx(4 / 3, rel=0.01)


def test_the_parameter_only_counts_of_a_plan() -> None:
    assert recipe_flops_per_token_of_params("full", 750.0, 1000.0) == 4500.0
    assert recipe_flops_per_token_of_params("lora", 750.0, 1000.0) == 3000.0
    assert recipe_flops_per_token_of_params("lora", 1000.0, 1000.0, masked=True) == 6000.0
    assert recipe_flops_per_token_of_params("distill", 750.0, 1000.0) == 4500.0 + 2000.0
    with pytest.raises(ValueError):
        recipe_flops_per_token_of_params("none", 1.0, 1.0)
