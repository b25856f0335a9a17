"""The post-training loop: schedules, clipping, the loss, the batch loader, masks, determinism,
resumable state, the CUDA settings and compiled blocks."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from tests.workers.ml.pipeline_helpers import tiny_llama
from workers.ml.data import BatchStream
from workers.ml.evaluate import causal_lm_loss
from workers.ml.models import build_tiny_model, decoder_layers
from workers.ml.train import (
    BatchLoader,
    TensorBlocks,
    TrainConfig,
    Trainer,
    clip_gradients,
    compile_blocks,
    compile_wanted,
    configure_cuda,
    describe_schedule,
    lr_at,
)

torch.set_num_threads(1)

VOCAB = 64


def _blocks(n: int = 32, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_constant_schedule_warms_up_linearly_then_holds() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, total_steps=100)
    assert [lr_at(s, cfg) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert lr_at(99, cfg) == 1e-3
    assert describe_schedule(cfg) == "constant lr=0.001 warmup=4%"


def test_cosine_schedule_decays_to_its_floor_at_the_last_step() -> None:
    cfg = TrainConfig(
        lr=1e-3, schedule="cosine", warmup_steps=10, total_steps=111, min_lr_ratio=0.01
    )
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(110, cfg) == pytest.approx(1e-5)
    values = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        TrainConfig(schedule="linear")


def test_loss_decreases_on_a_repeated_batch() -> None:
    model = tiny_llama(VOCAB)
    block = _blocks(1)
    trainer = Trainer(model, block, TrainConfig(lr=3e-3, total_steps=40, batch_size=4))
    trainer.train_until(1)
    first = trainer.pop_train_loss()
    trainer.train_until(40)
    last_steps = trainer.pop_train_loss()
    assert last_steps < first - 1.0
    assert trainer.tokens_done == 40 * 4 * 16


def _masks_for(model: nn.Module) -> dict[str, torch.Tensor]:
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(model.named_parameters())[name]
    mask = (torch.arange(weight.numel()) % 2 == 0).float().view_as(weight)
    return {name: mask}


def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def test_masked_weights_stay_zero_after_every_optimizer_step() -> None:
    model = tiny_llama(VOCAB)
    masks = _masks_for(model)
    _apply(model, masks)
    seen: list[bool] = []
    trainer = Trainer(
        model,
        _blocks(),
        TrainConfig(lr=1e-2, total_steps=6, batch_size=2),
        masks=masks,
        apply_masks=_apply,
    )
    weight = dict(model.named_parameters())["model.layers.0.mlp.up_proj.weight"]

    def check(_step: int) -> None:
        seen.append(bool((weight[masks_zero] == 0).all()))

    masks_zero = next(iter(masks.values())) == 0
    trainer.train_until(6, on_step=check, every=1)
    assert seen == [True] * 6
    assert (weight[~masks_zero] != 0).all()
    with pytest.raises(ValueError):
        Trainer(model, _blocks(), TrainConfig(), masks=masks)


def _run(steps: int, *, grad_accum: int = 1) -> tuple[list[float], torch.Tensor]:
    model = tiny_llama(VOCAB, seed=5)
    trainer = Trainer(
        model,
        _blocks(),
        TrainConfig(lr=2e-3, total_steps=steps, batch_size=2, grad_accum=grad_accum, seed=11),
    )
    losses = []
    for s in range(1, steps + 1):
        trainer.train_until(s)
        losses.append(trainer.pop_train_loss())
    return losses, model.lm_head.weight.detach().clone()


def test_two_runs_with_the_same_seed_are_identical() -> None:
    a, wa = _run(5)
    b, wb = _run(5)
    assert a == b and torch.equal(wa, wb)
    assert all(math.isfinite(x) for x in a)
    c, _ = _run(5, grad_accum=2)
    assert c != a  # accumulation draws twice the sequences per step


def test_state_dict_resumes_the_same_trajectory() -> None:
    full_model = tiny_llama(VOCAB, seed=2)
    cfg = TrainConfig(lr=2e-3, total_steps=6, batch_size=2, seed=4)
    full = Trainer(full_model, _blocks(), cfg)
    full.train_until(6)

    first_model = tiny_llama(VOCAB, seed=2)
    first = Trainer(first_model, _blocks(), cfg)
    first.train_until(3)
    state, weights = first.state_dict(), {k: v.clone() for k, v in first_model.state_dict().items()}

    resumed_model = tiny_llama(VOCAB, seed=99)
    resumed_model.load_state_dict(weights)
    resumed = Trainer(resumed_model, _blocks(), cfg)
    resumed.load_state_dict(state)
    assert resumed.step == 3
    resumed.train_until(6)
    for (name, a), b in zip(
        full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


# --------------------------------------------------------------------------- the recipe


def test_wsd_schedule_warms_up_holds_then_decays_linearly_over_its_last_steps() -> None:
    cfg = TrainConfig(
        lr=1e-3, schedule="wsd", warmup_steps=2, total_steps=10, decay_steps=4, min_lr_ratio=0.1
    )
    values = [lr_at(s, cfg) for s in range(10)]
    assert values[:6] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    # Step i of the 4 decay steps is (i + 1) / 5 of the way to the floor (torchtitan's rule).
    floor = 1e-4
    assert values[6:] == pytest.approx([floor + (1e-3 - floor) * (1 - k / 5) for k in (1, 2, 3, 4)])
    assert all(a >= b for a, b in itertools.pairwise(values[1:]))
    assert describe_schedule(cfg) == "wsd lr=0.001 warmup=20% decay=40% floor=0.1"
    # No decay steps: the stable peak to the end.
    flat = TrainConfig(lr=1e-3, schedule="wsd", total_steps=5)
    assert [lr_at(s, flat) for s in range(5)] == [1e-3] * 5


@pytest.mark.parametrize(
    "bad",
    [
        {"warmup_steps": 6, "decay_steps": 5},
        {"decay_steps": -1},
        {"min_lr_ratio": 1.5},
        {"grad_clip": 0.0},
        {"grad_clip": math.inf},
    ],
)
def test_train_config_refuses_a_schedule_or_clip_it_cannot_run(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(schedule="wsd", total_steps=10, **bad)  # type: ignore[arg-type]


def _recorded_batches(model: nn.Module) -> list[torch.Tensor]:
    """The input_ids of every forward pass of ``model``, in order."""
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: object, kwargs: dict[str, torch.Tensor]) -> None:
        seen.append(kwargs["input_ids"].clone())

    model.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def _reference_batches(blocks: torch.Tensor, cfg: TrainConfig, count: int) -> list[torch.Tensor]:
    """What the loop drew before the loader: one stream draw per micro-batch, in order."""
    stream = BatchStream(blocks.shape[0], cfg.batch_size, seed=cfg.seed)
    return [blocks[stream.next_indices()] for _ in range(count)]


def test_the_loader_feeds_the_streams_batches_in_order_and_leaves_it_where_training_stopped() -> (
    None
):
    blocks = _blocks(37)
    cfg = TrainConfig(lr=1e-3, total_steps=20, batch_size=3, grad_accum=2, seed=9)
    model = tiny_llama(VOCAB, seed=1)
    seen = _recorded_batches(model)
    trainer = Trainer(model, blocks, cfg)
    trainer.train_until(3)
    # A step that asks to stop (the attempt's time limit) draws nothing after it.
    trainer.train_until(9, on_step=lambda step: step == 5, every=1)
    assert trainer.step == 5
    saved = trainer.stream.state_dict()
    trainer.train_until(7)
    expected = _reference_batches(blocks, cfg, 14)
    assert len(seen) == 14 and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    reference = BatchStream(37, 3, seed=9)
    for _ in range(10):
        reference.next_indices()
    assert saved == reference.state_dict()

    # A trainer resumed from the saved position draws what the uninterrupted one drew.
    resumed_model = tiny_llama(VOCAB, seed=1)
    resumed_seen = _recorded_batches(resumed_model)
    resumed = Trainer(resumed_model, blocks, cfg)
    resumed.step = 5
    resumed.stream.load_state_dict(saved)
    resumed.train_until(7)
    assert all(torch.equal(a, b) for a, b in zip(resumed_seen, expected[10:], strict=True))


def test_the_loader_on_cpu_hands_over_the_rows_as_they_are() -> None:
    blocks = _blocks(10)
    stream = BatchStream(10, 4, seed=1)
    loader = BatchLoader(
        TensorBlocks(blocks, torch.device("cpu")), stream, slice(1, 3), torch.device("cpu")
    )
    sent = loader.send()
    assert not sent.side
    batch = loader.ready(sent)
    assert torch.equal(batch, blocks[BatchStream(10, 4, seed=1).next_indices()[1:3]])


def _first_batch_gradients(
    model: nn.Module, cfg: TrainConfig, blocks: torch.Tensor
) -> list[torch.Tensor]:
    ids = _reference_batches(blocks, cfg, 1)[0]
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_clipping_bounds_the_global_norm_measured_before_it() -> None:
    blocks = _blocks()
    cfg = TrainConfig(lr=1e-3, total_steps=3, batch_size=4, grad_clip=0.5, seed=2)
    model = tiny_llama(VOCAB, seed=4)
    grads = _first_batch_gradients(copy.deepcopy(model), cfg, blocks)
    unclipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert unclipped > 0.5  # so that the clip acts
    trainer = Trainer(model, blocks, cfg)
    clipped: list[float] = []
    original = trainer.optimizer.step

    def step_and_look(*args: object, **kwargs: object) -> object:
        norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]
        clipped.append(float(torch.linalg.vector_norm(torch.stack(norms))))
        return original(*args, **kwargs)

    trainer.optimizer.step = step_and_look  # type: ignore[method-assign]
    trainer.train_until(1)
    assert trainer.grad_norm is not None
    assert float(trainer.grad_norm) == pytest.approx(float(unclipped), rel=1e-5)
    assert clipped == [pytest.approx(0.5, rel=1e-4)]


def test_clip_gradients_is_torchs_clip_grad_norm() -> None:
    a, b = tiny_llama(VOCAB, seed=6), tiny_llama(VOCAB, seed=6)
    ids = _blocks(4)
    for m in (a, b):
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    norm = clip_gradients([p for p in a.parameters()], 0.1)
    expected = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
    assert torch.allclose(norm, expected)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad)


def test_the_clipping_norm_leaves_out_the_gradients_of_pruned_weights() -> None:
    blocks = _blocks()
    cfg = TrainConfig(lr=1e-3, total_steps=2, batch_size=4, grad_clip=1e6, seed=2)
    model = tiny_llama(VOCAB, seed=4)
    masks = _masks_for(model)
    _apply(model, masks)
    reference = copy.deepcopy(model)
    ids = _reference_batches(blocks, cfg, 1)[0]
    reference(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    named = dict(reference.named_parameters())
    for name, mask in masks.items():
        named[name].grad.mul_(mask)  # type: ignore[union-attr]
    expected = torch.linalg.vector_norm(
        torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in reference.parameters() if p.grad is not None]
        )
    )
    trainer = Trainer(model, blocks, cfg, masks=masks, apply_masks=_apply)
    trainer.train_until(1)
    assert trainer.grad_norm is not None
    assert float(trainer.grad_norm) == pytest.approx(float(expected), rel=1e-5)


def test_the_trainers_loss_is_the_full_logit_loss_of_the_same_batch() -> None:
    blocks = _blocks()
    cfg = TrainConfig(lr=1e-3, total_steps=1, batch_size=4, grad_accum=2, seed=3)
    model = tiny_llama(VOCAB, seed=8)
    reference = copy.deepcopy(model)
    batches = _reference_batches(blocks, cfg, 2)
    with torch.no_grad():
        expected = sum(reference(input_ids=b, labels=b).loss.item() for b in batches) / 2
    trainer = Trainer(model, blocks, cfg)
    trainer.train_until(1)
    assert trainer.pop_train_loss() == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- CUDA settings


def test_configure_cuda_turns_on_tf32_for_cuda_matmuls_only() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        configure_cuda()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.mkldnn.matmul.fp32_precision in {"none", "ieee"}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compile_is_on_by_default_on_cuda_only() -> None:
    assert compile_wanted(None, "cuda") and not compile_wanted(None, "cpu")
    assert compile_wanted(True, "cpu") and not compile_wanted(False, torch.device("cuda"))


def test_compiled_blocks_keep_their_names_and_train_to_the_same_gradients() -> None:
    eager = build_tiny_model("qwen2", seed=2, tie_word_embeddings=True)
    compiled = copy.deepcopy(eager)
    compiled.activation_checkpointing_enable({"use_reentrant": False})
    names = list(compiled.state_dict())
    assert compile_blocks(compiled, backend="aot_eager") == 4
    assert list(compiled.state_dict()) == names  # no "_orig_mod." in any name
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(compiled))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    losses = []
    for m in (eager, compiled):
        m.train()
        loss = causal_lm_loss(m, ids)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
