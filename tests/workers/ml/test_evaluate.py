"""Held-out loss: the mean token cross-entropy and its standard error; the chunked loss that
training and evaluation share, equal to the full-logit one (tied heads, autocast, FSDP2)."""

from __future__ import annotations

import copy
import math
from typing import Literal

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn import functional

from tests.workers.ml.pipeline_helpers import tiny_llama
from workers.ml.evaluate import (
    LMParts,
    block_losses,
    causal_lm_loss,
    eval_loss,
    final_hidden_states,
    loss_chunk_tokens,
    next_token_labels,
    token_losses,
)
from workers.ml.models import build_tiny_model, decoder_layers
from workers.ml.train import clip_gradients

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


def test_the_bf16_evaluation_keeps_no_weight_copies_and_gives_the_cached_losses() -> None:
    """Autocast's cache would hold a bf16 copy of every weight until the held-out forward ends
    (15 GiB at 8B on the device that prepares the job): the evaluation runs without it, and the
    values are those of the cached casts."""
    model = tiny_llama(97, seed=1)
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    seen: list[bool] = []
    hook = decoder_layers(model)[0].register_forward_hook(
        lambda *_: seen.append(torch.is_autocast_cache_enabled())
    )
    loss, _ = eval_loss(model, ids, batch_size=2, autocast_dtype=torch.bfloat16)
    hook.remove()
    assert seen == [False, False]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the cache on, as before
        cached = block_losses(model, ids, batch_size=4)
    assert loss == pytest.approx(cached.mean().item(), abs=1e-6)


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


# --------------------------------------------------------------------------- the chunked loss


def _full_logit_loss_and_grads(
    model: nn.Module, ids: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_the_chunked_loss_and_its_gradients_equal_the_full_logit_loss(
    arch: Literal["llama", "qwen2", "qwen3", "mistral"], tied: bool
) -> None:
    model = build_tiny_model(arch, seed=1, tie_word_embeddings=tied).train()
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))
    expected, expected_grads = _full_logit_loss_and_grads(model, ids)
    for chunk in (None, 7):  # one chunk for the 51 tokens, then 8 of them
        loss = causal_lm_loss(model, ids, chunk=chunk)
        loss.backward()
        assert abs(float(loss.detach()) - expected) < 1e-5
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert torch.allclose(param.grad, expected_grads[name], atol=1e-6), name
        model.zero_grad(set_to_none=True)


def test_the_chunked_loss_under_autocast_is_the_full_logit_loss_under_autocast() -> None:
    model = build_tiny_model("llama", seed=3, tie_word_embeddings=True).train()
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = float(model(input_ids=ids, labels=ids, use_cache=False).loss.detach())
        loss = causal_lm_loss(model, ids, chunk=16)
    assert abs(float(loss.detach()) - expected) < 1e-5
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_the_loss_never_holds_the_logits_of_more_than_a_chunk() -> None:
    # What autograd keeps for the backward: vocabulary-wide tensors no larger than the head's
    # weight (48 × 512), never the 256 tokens × 512 logits of the batch.
    model = build_tiny_model("qwen2", seed=4, vocab_size=512, hidden_size=48).train()
    ids = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(2))
    largest = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        if 512 in tensor.shape:
            largest = max(largest, tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = causal_lm_loss(model, ids, chunk=24)
    loss.backward()
    assert largest == 48 * 512
    assert loss_chunk_tokens(128_256) == 1024 and loss_chunk_tokens(256) == 4096


def test_evaluation_builds_no_kv_cache_and_asks_no_logits_of_the_model() -> None:
    model = tiny_llama(64, seed=2)
    calls: list[dict[str, object]] = []
    model.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(dict(kwargs)), with_kwargs=True
    )
    eval_loss(model, torch.randint(0, 64, (3, 8)), batch_size=2)
    assert len(calls) == 2
    assert all(c["use_cache"] is False for c in calls)
    assert all(isinstance(k := c["logits_to_keep"], torch.Tensor) and k.numel() == 0 for c in calls)


def test_block_losses_equal_the_full_logit_cross_entropy_in_chunks() -> None:
    model = tiny_llama(97, seed=5)
    ids = torch.randint(0, 97, (6, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = functional.cross_entropy(
        logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1), reduction="none"
    ).view(6, 39)
    got = block_losses(model, ids, batch_size=4)
    assert torch.allclose(got, expected.mean(dim=1).double(), atol=1e-6)
    labels = next_token_labels(ids[:2]).reshape(-1)
    with torch.no_grad():
        hidden, _ = final_hidden_states(model, ids[:2], LMParts(model))
        per_token = token_losses(hidden.reshape(-1, 32), model.lm_head, labels, chunk=9)
    assert torch.allclose(per_token.view(2, 40)[:, :-1], expected[:2], atol=1e-6)
    assert bool((per_token.view(2, 40)[:, -1] == 0).all())


def test_the_chunked_loss_and_clipping_under_fsdp2_equal_the_unsharded_ones() -> None:
    """FSDP2 (one gloo process): the root module's hooks gather the head for the chunks, the
    gradients come out sharded, and the clipping norm is the global one."""
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        reference = build_tiny_model("llama", seed=6, tie_word_embeddings=True).train()
        model = copy.deepcopy(reference)
        mesh = init_device_mesh("cpu", (1,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(4))
        expected, expected_grads = _full_logit_loss_and_grads(reference, ids)
        loss = causal_lm_loss(model, ids, chunk=10)
        loss.backward()
        assert abs(float(loss.detach()) - expected) < 1e-5
        for name, param in model.named_parameters():
            assert isinstance(param.grad, DTensor), name
            assert torch.allclose(param.grad.full_tensor(), expected_grads[name], atol=1e-6), name
        reference(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        norm = clip_gradients(list(model.parameters()), 0.05)
        expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        assert not isinstance(norm, DTensor) and torch.allclose(norm, expected_norm)
        for param, ref in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(param.grad.full_tensor(), ref.grad, atol=1e-7)  # type: ignore[union-attr]
        assert torch.allclose(block_losses(model, ids), block_losses(reference, ids), atol=1e-6)
    finally:
        dist.destroy_process_group()
