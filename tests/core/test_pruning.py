"""The pruning plan from config.json: N0 as the worker counts it, each method's counts and reach,
and width pruning continuous in ρ at Llama-3.1-8B and Qwen2.5-7B shapes with configs that stock
transformers reloads."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from app.core.pruning import (
    METHODS,
    ModelShape,
    OutOfReachError,
    PlanError,
    PrunePlan,
    UnsupportedConfigError,
    check_reach,
    closest_counts,
    parameter_count,
    plan_pruning,
)
from tests.shapes import LLAMA_31_8B, QWEN25_7B
from workers.ml.models import build_tiny_model, count_parameters, prunable_linears

REAL = {"llama-3.1-8b": LLAMA_31_8B, "qwen2.5-7b": QWEN25_7B}
WIDTH_RHOS = [round(0.15 + 0.01 * i, 2) for i in range(21)]


def _meta_count(config: dict[str, Any]) -> int:
    """Parameters of the model stock transformers builds from ``config`` (meta device)."""
    values = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(config["model_type"], **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    return count_parameters(model)


def _pruned_config(config: dict[str, Any], plan: PrunePlan) -> dict[str, Any]:
    """``config`` with the sizes the plan keeps (what the worker writes into the saved model)."""
    return config | {
        "num_hidden_layers": plan.shape["layers"],
        "num_attention_heads": plan.shape["attention_heads"],
        "num_key_value_heads": plan.shape["kv_heads"],
        "head_dim": plan.shape["head_dim"],
        "intermediate_size": plan.shape["intermediate_size"],
    }


def _reloads(config: dict[str, Any], tmp_path: Path) -> int:
    """Save ``config`` as config.json, read it back with AutoConfig and build the model on the
    meta device; its parameter count."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf_config = AutoConfig.from_pretrained(tmp_path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    return count_parameters(model)


# --------------------------------------------------------------------------- N0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3"])
@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_is_what_the_worker_counts_on_the_built_model(
    arch: str, tied: bool, tmp_path: Path
) -> None:
    model = build_tiny_model(arch, tie_word_embeddings=tied)  # type: ignore[arg-type]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert parameter_count(config) == count_parameters(model)


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("llama", {"attention_bias": True, "mlp_bias": True}),
        ("qwen3", {"attention_bias": True}),
        ("mistral", {"head_dim": 8}),
        ("qwen2", {"num_key_value_heads": 4}),
    ],
)
def test_parameter_count_follows_biases_and_head_shapes(arch: str, extra: dict[str, Any]) -> None:
    model = build_tiny_model(arch, **extra)  # type: ignore[arg-type]
    assert parameter_count(model.config.to_dict()) == count_parameters(model)


@pytest.mark.parametrize("name", sorted(REAL))
def test_parameter_count_at_real_shapes_matches_the_model_built_on_meta(name: str) -> None:
    config = REAL[name]
    expected = {"llama-3.1-8b": 8_030_261_248, "qwen2.5-7b": 7_615_616_512}[name]
    assert parameter_count(config) == _meta_count(config) == expected


def test_configs_it_cannot_read_are_one_error_type() -> None:
    for config in (
        {"model_type": "gpt2", "n_embd": 64},
        {"model_type": "llama"},
        LLAMA_31_8B | {"num_key_value_heads": 5},
        LLAMA_31_8B | {"hidden_size": "big"},
        LLAMA_31_8B | {"per_layer_config": {"0": {"intermediate_size": 10}}},
    ):
        with pytest.raises(UnsupportedConfigError):
            parameter_count(config)
        with pytest.raises(UnsupportedConfigError):
            plan_pruning(config, "depth", 0.2)


def test_importing_it_pulls_in_no_torch_transformers_or_numpy() -> None:
    code = (
        "import sys, app.core.pruning; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", sorted(REAL))
@pytest.mark.parametrize("method", METHODS)
def test_a_plan_is_json_and_its_numbers_add_up(name: str, method: str) -> None:
    config = REAL[name]
    plan = plan_pruning(config, method, 0.3)
    json.dumps(plan.shape)  # the dry run and the job records carry it as JSON
    assert plan.method == method and plan.target_rho == 0.3
    assert plan.n0 == parameter_count(config)
    assert plan.rho == (plan.n0 - plan.n_after) / plan.n0
    assert abs(plan.rho - 0.3) < 0.01
    assert 0.3 < plan.shape["max_rho"] < 1
    assert {"layers", "attention_heads", "kv_heads", "head_dim", "intermediate_size"} <= set(
        plan.shape
    )


@pytest.mark.parametrize("name", sorted(REAL))
@pytest.mark.parametrize("method", METHODS)
def test_out_of_reach_names_the_maximum_and_the_maximum_is_reachable(
    name: str, method: str
) -> None:
    config = REAL[name]
    max_rho = plan_pruning(config, method, 0.2).shape["max_rho"]
    with pytest.raises(OutOfReachError) as caught:
        plan_pruning(config, method, min(max_rho + 0.02, 0.999))
    assert isinstance(caught.value, ValueError)
    assert caught.value.method == method and caught.value.max_rho == max_rho
    assert f"rho={max_rho:.4f}" in str(caught.value)
    below = max_rho - 1e-6 if method == "unstructured" else max_rho
    assert plan_pruning(config, method, below).rho == pytest.approx(max_rho, abs=2e-3)


def test_unknown_methods_and_rates_are_plan_errors() -> None:
    with pytest.raises(PlanError, match="unknown pruning method 'magic'"):
        plan_pruning(LLAMA_31_8B, "magic", 0.2)
    for rho in (0.0, 1.0, math.nan, -0.5):
        with pytest.raises(PlanError, match=r"rho must be a fraction in \(0, 1\)"):
            plan_pruning(LLAMA_31_8B, "width", rho)


def test_check_reach_holds_an_unreadable_config_to_the_bound_every_model_obeys() -> None:
    assert check_reach(None, "2:4", 0.5) is None
    assert check_reach({"model_type": "gpt2"}, "depth", 0.9) is None
    with pytest.raises(OutOfReachError, match=r"at most rho=0\.5000"):
        check_reach(None, "2:4", 0.6)
    plan = check_reach(QWEN25_7B, "width", 0.25)
    assert plan is not None and plan == plan_pruning(QWEN25_7B, "width", 0.25)


# --------------------------------------------------------------------------- depth


@pytest.mark.parametrize("name", sorted(REAL))
def test_depth_removes_the_layer_count_closest_to_rho_and_reloads(
    name: str, tmp_path: Path
) -> None:
    config = REAL[name]
    per_layer = ModelShape.from_config(config).layer_parameters()
    for rho in (0.1, 0.25, 0.4):
        plan = plan_pruning(config, "depth", rho)
        assert abs(plan.rho - rho) <= per_layer / plan.n0 / 2
        assert plan.shape["layers"] + plan.shape["layers_removed"] == config["num_hidden_layers"]
    assert _reloads(_pruned_config(config, plan), tmp_path) == plan.n_after


# --------------------------------------------------------------------------- width


@pytest.mark.parametrize("name", sorted(REAL))
def test_width_is_continuous_in_rho_at_real_shapes_and_every_config_reloads(
    name: str, tmp_path: Path
) -> None:
    config = REAL[name]
    shape = ModelShape.from_config(config)
    plans = [plan_pruning(config, "width", rho) for rho in WIDTH_RHOS]
    # One MLP channel in every layer is the step: ρ lands within half of it (far inside 0.02).
    step = shape.layers * shape.channel_parameters() / shape.parameter_count()
    prunable = (
        shape.kv_heads * shape.group_parameters()
        + shape.intermediate_size * shape.channel_parameters()
    )
    for rho, plan in zip(WIDTH_RHOS, plans, strict=True):
        assert abs(plan.rho - rho) <= step / 2 < 0.02
        assert plan.shape["attention_heads"] == plan.shape["kv_heads"] * shape.group_size
        # Attention loses its proportional share of the removal rounded to a group, never more.
        groups = rho * shape.parameter_count() / shape.layers / prunable * shape.kv_heads
        assert plan.shape["kv_groups_removed"] <= math.floor(groups + 0.5)
    for low, high in itertools.pairwise(plans):
        assert high.rho > low.rho
        assert 0 <= low.shape["kv_heads"] - high.shape["kv_heads"] <= 1  # one group at a time
    # Each distinct shape is a config stock transformers reads back and builds as planned.
    distinct = {(p.shape["kv_heads"], p.shape["intermediate_size"]): p for p in plans}
    for i, plan in enumerate(distinct.values()):
        assert _reloads(_pruned_config(config, plan), tmp_path / str(i)) == plan.n_after


def test_width_at_qwen25_7b_trades_whole_groups_with_channels() -> None:
    plans = {rho: plan_pruning(QWEN25_7B, "width", rho) for rho in WIDTH_RHOS}
    kept = {rho: p.shape["kv_heads"] for rho, p in plans.items()}
    assert kept[0.15] == 3 and kept[0.35] == 2  # 1 then 2 of its 4 groups go, one step
    assert all(p.shape["channels_removed"] > 0 for p in plans.values())


def test_width_at_llama_31_8b_keeps_heads_where_llama_allows_only_halving_them() -> None:
    shape = ModelShape.from_config(LLAMA_31_8B)
    # hidden_size % heads == 0 with 4 heads a group: 8, 4, 2 or 1 groups, nothing between.
    assert [k for k in range(1, 9) if shape.accepts_kv_heads(k)] == [1, 2, 4, 8]
    for rho in WIDTH_RHOS:  # half of attention would go at once: MLP channels take it all
        assert plan_pruning(LLAMA_31_8B, "width", rho).shape["kv_heads"] == 8
    deep = plan_pruning(LLAMA_31_8B, "width", 0.45)  # attention's share now rounds to 4 groups
    assert deep.shape["kv_heads"] == 4 and deep.shape["attention_heads"] == 16


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "qwen3"])
def test_the_head_counts_accepted_are_the_ones_transformers_accepts(model_type: str) -> None:
    base = {
        "model_type": model_type,
        "vocab_size": 256,
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 12,
        "num_key_value_heads": 6,
        "head_dim": 8,
        "intermediate_size": 64,
    }
    shape = ModelShape.from_config(base)
    for kv in range(1, 7):
        values = base | {"num_attention_heads": 2 * kv, "num_key_value_heads": kv}
        values.pop("model_type")
        try:
            AutoConfig.for_model(model_type, **values).validate()
            accepted = True
        except Exception:  # the config library raises its own types
            accepted = False
        assert shape.accepts_kv_heads(kv) == accepted, kv


def test_width_counts_attention_and_mlp_as_the_model_has_them() -> None:
    model = build_tiny_model("qwen2")  # q/k/v biases go with their heads
    shape = ModelShape.from_config(model.config.to_dict())
    layer = next(iter(prunable_linears(model).values()))
    assert layer.in_features == shape.hidden_size
    # 2 query heads (rows + bias), 1 key and 1 value head (rows + bias), 2 o_proj columns.
    assert shape.group_parameters() == 4 * 16 * (64 + 1) + 2 * 16 * 64
    assert shape.channel_parameters() == 3 * 64


# --------------------------------------------------------------------------- 2:4, unstructured


def test_two_four_sparsifies_each_class_of_projections_in_an_even_share() -> None:
    plan = plan_pruning(LLAMA_31_8B, "2:4", 0.3)
    classes = plan.shape["projections_2of4"]
    assert [c["roles"] for c in classes] == [["gate", "up", "down"], ["q", "o"], ["k", "v"]]
    assert [c["of"] for c in classes] == [96, 64, 64]
    shares = [c["count"] / c["of"] for c in classes]
    assert max(shares) - min(shares) < 0.05
    zeroed = sum(c["count"] * c["zeroed_each"] for c in classes)
    assert plan.rho == zeroed / plan.n0
    assert abs(zeroed - 0.3 * plan.n0) <= classes[-1]["zeroed_each"] / 2


def test_closest_counts_is_exact_where_greedy_is_not_and_ties_go_to_the_even_share() -> None:
    # Greedy largest-first would take 6 then stop at 6 + 1 = 7 (gap 1); 4 + 4 = 8 is exact.
    assert closest_counts([6, 4, 1], [1, 2, 1], 8.0) == [0, 2, 0]
    # 8 = two 4s = one 4 and two 2s = four 2s: the even share is one of each kind and two 2s.
    assert closest_counts([4, 2], [2, 4], 8.0) == [1, 2]
    assert closest_counts([], [], 5.0) == []


def test_unstructured_zeroes_the_same_fraction_of_every_projection() -> None:
    plan = plan_pruning(QWEN25_7B, "unstructured", 0.4)
    zeros = plan.shape["zeros_per_projection"]
    shape = ModelShape.from_config(QWEN25_7B)
    for role, (out, inp) in shape.projections().items():
        assert zeros[role] == round(plan.shape["fraction"] * out * inp)
    assert plan.rho == shape.layers * sum(zeros.values()) / plan.n0
