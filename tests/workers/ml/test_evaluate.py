"""Held-out loss: the mean token cross-entropy and its standard error."""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from tests.workers.ml.pipeline_helpers import tiny_llama
from workers.ml.evaluate import eval_loss

torch.set_num_threads(1)


def test_eval_loss_equals_a_manual_cross_entropy_over_every_predicted_token() -> None:
    model = tiny_llama(97, seed=1)
    ids = torch.randint(0, 97, (5, 16), generator=torch.Generator().manual_seed(0))
    loss, stderr = eval_loss(model, ids, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    per_token = functional.cross_entropy(
        logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1), reduction="none"
    ).view(5, 15)
    assert math.isclose(loss, per_token.mean().item(), rel_tol=1e-5)
    block_means = per_token.mean(dim=1).double()
    assert math.isclose(stderr, (block_means.std() / math.sqrt(5)).item(), rel_tol=1e-4)
    # An untrained model is close to uniform over the vocabulary.
    assert abs(loss - math.log(97)) < 0.5


def test_eval_loss_restores_training_mode_and_does_not_touch_gradients() -> None:
    model = tiny_llama(50)
    model.train()
    ids = torch.randint(0, 50, (3, 8))
    eval_loss(model, ids, batch_size=8)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    eval_loss(model, ids)
    assert not model.training
