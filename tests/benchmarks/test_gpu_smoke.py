"""On a CUDA device: a tiny Llama trains in bf16 with the job's Trainer and its loss drops."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workers.ml.evaluate import eval_loss
from workers.ml.train import TrainConfig, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_tiny_llama_trains_five_bf16_steps_on_cuda() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg)
    torch.nn.Module.to(model, device)
    blocks = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))
    before, _ = eval_loss(model, blocks, device=device, autocast_dtype=torch.bfloat16)
    trainer = Trainer(
        model,
        blocks,
        TrainConfig(lr=3e-3, total_steps=5, batch_size=8),
        device=device,
        autocast_dtype=torch.bfloat16,
    )
    trainer.train_until(5)
    after, _ = eval_loss(model, blocks, device=device, autocast_dtype=torch.bfloat16)
    assert trainer.step == 5
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert torch.isfinite(torch.tensor(trainer.pop_train_loss()))
    assert after < before - 0.05, (before, after)
