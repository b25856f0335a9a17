"""A model's N0 and its 2:4 reach, read from config.json, equal what the workers measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.capacity import capacity_from_config
from workers.ml.models import build_tiny_model, count_parameters, prunable_linears


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3"])
@pytest.mark.parametrize("tied", [False, True])
def test_config_counts_match_the_loaded_model(arch: str, tied: bool, tmp_path: Path) -> None:
    model = build_tiny_model(arch, tie_word_embeddings=tied)  # type: ignore[arg-type]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    capacity = capacity_from_config(config)
    assert capacity is not None
    assert capacity.n0 == count_parameters(model)
    zeroable = sum(
        lin.weight.numel() // 2
        for lin in prunable_linears(model).values()
        if lin.in_features % 4 == 0
    )
    assert capacity.zeroable_2of4 == zeroable


def test_unknown_architecture_gives_none() -> None:
    assert capacity_from_config({"model_type": "gpt2", "n_embd": 64}) is None
    assert capacity_from_config({"model_type": "llama"}) is None
