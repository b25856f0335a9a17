"""Every method on the architectures that share the Llama shape, and in bf16."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel

from workers.ml.models import build_tiny_model
from workers.ml.prune import prune

# (method, target rho, tolerance from that method's granularity on the default tiny model)
_CASES = [
    ("depth", 0.25, 36992 / 2 / 180800),  # half a layer
    ("width", 0.3, 4 * 3 * 64 / 2 / 180800),  # half a channel in every layer
    ("2:4", 0.25, 1024 / 2 / 180800),  # half the smallest projection's zeroed half
    ("unstructured", 0.4, 28 * 0.5 / 180800),  # half a weight per projection
]


@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
@pytest.mark.parametrize(("method", "rho", "tolerance"), _CASES)
def test_every_method_prunes_saves_and_reloads_mistral_and_qwen3(
    arch: str,
    method: str,
    rho: float,
    tolerance: float,
    *,
    calib_ids: torch.Tensor,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
    reload: Callable[[PreTrainedModel], PreTrainedModel],
) -> None:
    model = build_tiny_model(arch)  # type: ignore[arg-type]
    result = prune(model, method, rho, calib_ids)
    assert abs(result.rho - rho) <= tolerance * 1.01  # qwen3 adds q/k norms to N0
    json.dumps(result.details)  # details go into job records as JSON
    reloaded = reload(model)
    assert lm_loss(reloaded, eval_batch) == pytest.approx(lm_loss(model, eval_batch), abs=1e-5)
    out = reloaded.generate(eval_batch[:1, :5], max_new_tokens=3, do_sample=False)  # type: ignore[operator]
    assert out.shape == (1, 8)


@pytest.mark.parametrize(("method", "rho", "tolerance"), _CASES)
def test_every_method_works_on_a_bf16_model(
    method: str, rho: float, tolerance: float, calib_ids: torch.Tensor, eval_batch: torch.Tensor
) -> None:
    model = build_tiny_model("llama")
    nn.Module.to(model, torch.bfloat16)
    result = prune(model, method, rho, calib_ids)
    assert abs(result.rho - rho) <= tolerance
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        loss = model(input_ids=eval_batch, labels=eval_batch).loss
    assert torch.isfinite(loss)
