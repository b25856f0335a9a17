"""Tiny model fixtures shared by the ML tests (models < 1M parameters, built from a config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from workers.ml.models import build_tiny_model, save_pretrained

# Two cores are shared by parallel test runs; one thread avoids oversubscription and is faster
# for models this small.
torch.set_num_threads(1)


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    """A fresh 4-layer Llama (~0.18M parameters, GQA 4 heads / 2 KV heads)."""
    return build_tiny_model("llama")


@pytest.fixture
def tiny_qwen2() -> PreTrainedModel:
    """A fresh 4-layer Qwen2 (~0.18M parameters, q/k/v biases, GQA 4 heads / 2 KV heads)."""
    return build_tiny_model("qwen2")


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest) -> PreTrainedModel:
    """Each supported architecture in turn."""
    return build_tiny_model(request.param)


@pytest.fixture
def calib_ids() -> torch.Tensor:
    """Calibration token ids: 8 sequences of 32 tokens from the tiny vocabulary (fixed seed)."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(3, 256, (8, 32), generator=gen)


@pytest.fixture
def eval_batch() -> torch.Tensor:
    """A fixed batch for loss comparisons, disjoint in seed from the calibration tokens."""
    gen = torch.Generator().manual_seed(99)
    return torch.randint(3, 256, (4, 24), generator=gen)


def causal_lm_loss(model: PreTrainedModel, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy of ``model`` on ``ids``."""
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss.item())


@pytest.fixture
def lm_loss() -> Callable[[PreTrainedModel, torch.Tensor], float]:
    """The loss function used to compare in-memory and reloaded models."""
    return causal_lm_loss


def save_and_reload(model: PreTrainedModel, out_dir: Path) -> PreTrainedModel:
    """Save with the project's atomic saver and reload with plain ``from_pretrained``."""
    save_pretrained(model, None, out_dir)
    reloaded: PreTrainedModel = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    reloaded.train(False)
    return reloaded


@pytest.fixture
def reload(tmp_path: Path) -> Callable[[PreTrainedModel], PreTrainedModel]:
    """Round-trip a model through ``save_pretrained`` / ``from_pretrained`` in a temp dir."""
    counter = iter(range(1_000_000))

    def run(model: PreTrainedModel) -> PreTrainedModel:
        return save_and_reload(model, tmp_path / f"saved-{next(counter)}")

    return run
