"""The post-training loop: schedules, learning, masks, determinism, resumable state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from tests.workers.ml.pipeline_helpers import tiny_llama
from workers.ml.train import TrainConfig, Trainer, describe_schedule, lr_at

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
