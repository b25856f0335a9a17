"""The recovery recipes on the torch side: LoRA's masked merge and masked training (the model
trained and measured is the merged artifact), the chunked distillation loss, LoRA training only
its adapters, and each recipe's job resuming where it was killed."""

from __future__ import annotations

import copy
from pathlib import Path
from types import MethodType

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear
from torch.nn import functional
from transformers import AutoModelForCausalLM, PreTrainedModel

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest, LoraRecipe
from tests.workers.ml.pipeline_helpers import CrashError, Recorder, write_model_and_corpus
from workers.ml import recipes
from workers.ml.checkpoint import SafeReader, latest_complete_state
from workers.ml.evaluate import IGNORE, causal_lm_loss, linear_cross_entropy
from workers.ml.job import JobSpec
from workers.ml.models import load_tokenizer
from workers.ml.pipeline import job_splits, prune_and_post_train
from workers.ml.prune import apply_masks
from workers.ml.strategy import OneDevice
from workers.ml.train import TrainConfig, Trainer

torch.set_num_threads(1)

SEQ, BATCH = 32, 4


def two_four_masks(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """2:4 keep-masks of every projection: the two largest weights of each group of 4 inputs."""
    masks = {}
    for name, param in model.named_parameters():
        if name.endswith("proj.weight"):
            groups = param.detach().abs().reshape(-1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(1, groups.topk(2, dim=1).indices, True)
            masks[name] = keep.reshape(param.shape)
    return masks


def adapted_with_trained_adapters(
    model: PreTrainedModel, masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``model`` pruned 2:4, with adapters whose B is not zero (as after training)."""
    apply_masks(model, masks)
    recipes.inject_lora(model, LoraRecipe(kind="lora", rank=2))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)
    return recipes.adapted_masks(model, masks)


def max_nonzeros_per_group(weight: torch.Tensor) -> int:
    return int((weight.detach().reshape(-1, 4) != 0).sum(dim=1).max())


def test_merging_keeps_every_pruned_zero_and_a_naive_merge_would_not(
    tiny_llama: PreTrainedModel, tmp_path: Path
) -> None:
    masks = two_four_masks(tiny_llama)
    adapted = adapted_with_trained_adapters(tiny_llama, masks)
    assert all(".base_layer.weight" in name for name in adapted)
    q = tiny_llama.model.layers[0].self_attn.q_proj
    a, b = q.lora_A["default"].weight.detach(), q.lora_B["default"].weight.detach()
    base = q.base_layer.weight.detach().clone()

    merged = recipes.merge_lora(tiny_llama, adapted)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    weights = dict(reloaded.named_parameters())
    assert set(weights) == {n for n, _ in reloaded.named_parameters()} and not any(
        "lora" in n or "base_layer" in n for n in weights
    )
    for name, mask in masks.items():  # the exact pattern of the pruning, nothing more
        assert torch.equal(weights[name].detach() != 0, mask)
        assert max_nonzeros_per_group(weights[name]) == 2
    scale = 2 * 2 / 2  # alpha = 2 × rank, over rank
    expected = base + scale * (b @ a) * masks["model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"].detach(), expected)

    # The check above is not vacuous: a merge that ignores the masks fills the pattern in.
    naive = build_like(tiny_llama)
    adapted_with_trained_adapters(naive, masks)
    recipes.merge_lora(naive, {})
    assert max_nonzeros_per_group(naive.model.layers[0].self_attn.q_proj.weight) == 4


def formula_forward(module: LoraLinear, mask: torch.Tensor) -> None:
    """Give an adapted projection the masked forward written in plain autograd (the reference)."""
    base, a, b, scale = recipes.lora_parts(module)
    drop = module.lora_dropout["default"]

    def forward(self: LoraLinear, x: torch.Tensor) -> torch.Tensor:
        update = recipes.masked_delta(a, b, mask, scale)
        if isinstance(drop, torch.nn.Identity) or not drop.training:
            return functional.linear(x, base.weight + update, base.bias)
        out: torch.Tensor = base(x) + functional.linear(drop(x), update)
        return out

    module.forward = MethodType(forward, module)  # type: ignore[method-assign]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_masked_adapters_compute_the_merged_model_and_train_only_a_and_b(
    tiny_llama: PreTrainedModel, dropout: float
) -> None:
    masks = two_four_masks(tiny_llama)
    apply_masks(tiny_llama, masks)
    recipes.inject_lora(tiny_llama, LoraRecipe(kind="lora", rank=2, dropout=dropout))
    with torch.no_grad():
        for name, param in tiny_llama.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)
    adapted = recipes.adapted_masks(tiny_llama, masks)
    dense, reference = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    merged = recipes.merge_lora(copy.deepcopy(tiny_llama), adapted)
    assert recipes.mask_adapters(tiny_llama, adapted) == len(masks)
    for name, module in reference.named_modules():
        if isinstance(module, LoraLinear):
            formula_forward(module, adapted[f"{name}.base_layer.weight"])
    ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(4))

    # Evaluated, the adapted model is the merged one, in float32 and under bf16 autocast.
    for model in (tiny_llama, merged, dense):
        torch.nn.Module.eval(model)
    with torch.no_grad():
        got = tiny_llama(ids).logits
        torch.testing.assert_close(got, merged(ids).logits, atol=1e-6, rtol=1e-6)
        assert (got - dense(ids).logits).abs().max() > 1e-2  # peft's dense update is another model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(tiny_llama(ids).logits, merged(ids).logits)

    # Trained, the gradients reach A and B alone, and are autograd's through the formula.
    grads = []
    for model in (tiny_llama, reference):
        model.train()
        torch.manual_seed(5)  # the same dropout draws
        causal_lm_loss(model, ids).backward()  # type: ignore[no-untyped-call]
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    got_grads, expected = grads
    assert got_grads and all(".lora_A." in n or ".lora_B." in n for n in got_grads)
    assert set(got_grads) == set(expected)
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)


def build_like(model: PreTrainedModel) -> PreTrainedModel:
    copy = type(model)(model.config)
    copy.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=True)
    return copy


def full_logit_distill(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    t_hidden: torch.Tensor,
    t_head: torch.nn.Linear,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The loss as written, from the whole float32 logits."""
    s, t = head(hidden).float(), t_head(t_hidden).float()
    keep = labels != IGNORE
    log_q = functional.log_softmax(s / temperature, -1)
    log_p = functional.log_softmax(t / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[keep].mean()
    ce = functional.cross_entropy(s, labels, ignore_index=IGNORE)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 1.0), (2.0, 0.5), (0.7, 0.0)])
def test_the_chunked_distillation_loss_and_its_gradients_equal_the_full_logit_one(
    temperature: float, alpha: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, width, vocab = 23, 8, 50
    hidden = torch.randn(tokens, width, generator=gen, requires_grad=True)
    t_hidden = torch.randn(tokens, width, generator=gen)
    head, t_head = torch.nn.Linear(width, vocab), torch.nn.Linear(width, vocab, bias=False)
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    labels[::5] = IGNORE

    loss = recipes.linear_distill_loss(
        hidden, head, t_hidden, t_head, labels, temperature=temperature, alpha=alpha, chunk=7
    )
    loss.backward()  # type: ignore[no-untyped-call]
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())  # type: ignore[union-attr]
    assert t_head.weight.grad is None  # the teacher is a constant
    for tensor in (hidden, head.weight, head.bias):
        tensor.grad = None
    expected = full_logit_distill(
        hidden, head, t_hidden, t_head, labels, temperature=temperature, alpha=alpha
    )
    expected.backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for a, b in zip(got, (hidden.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    if alpha == 0.0:  # the LM loss alone
        lm = linear_cross_entropy(hidden, head, labels, chunk=7)
        torch.testing.assert_close(loss, lm, atol=1e-6, rtol=1e-6)
    if alpha == 1.0:  # T² scales the KL: the same logits at T = 3 give 9 × KL at T = 3
        at3 = recipes.linear_distill_loss(
            hidden, head, t_hidden, t_head, labels, temperature=3.0, alpha=1.0
        )
        s, t = head(hidden).float() / 3, t_head(t_hidden).float() / 3
        keep = labels != IGNORE
        kl = functional.kl_div(
            functional.log_softmax(s, -1)[keep],
            functional.log_softmax(t, -1)[keep],
            log_target=True,
            reduction="batchmean",
        )
        torch.testing.assert_close(at3, 9 * kl, atol=1e-6, rtol=1e-5)


def test_a_student_equal_to_its_teacher_has_no_kl(tiny_llama: PreTrainedModel) -> None:
    teacher = build_like(tiny_llama)
    ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_fn = recipes.Distillation(teacher, temperature=2.0, alpha=1.0)
    from workers.ml.evaluate import LMParts

    loss = loss_fn(tiny_llama, ids, LMParts(tiny_llama))
    assert abs(float(loss.detach())) < 1e-5


def test_lora_training_changes_only_the_adapters(tiny_llama: PreTrainedModel) -> None:
    masks = two_four_masks(tiny_llama)
    apply_masks(tiny_llama, masks)
    recipes.inject_lora(tiny_llama, LoraRecipe(kind="lora", rank=2, target_modules=["q_proj"]))
    masks = recipes.adapted_masks(tiny_llama, masks)
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    blocks = torch.randint(3, 256, (16, 16), generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(lr=1e-2, total_steps=3, batch_size=4, grad_clip=1.0)
    trainer = Trainer(tiny_llama, blocks, cfg, masks=masks, apply_masks=apply_masks)
    trainer.train_until(3)
    trained = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trained)
    for name, param in tiny_llama.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        if ".lora_" not in name:
            assert not changed, name  # frozen: the pruned weights, norms, embeddings, head
        elif ".lora_B." in name:
            assert changed, name


# --------------------------------------------------------------------------- jobs


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model_and_corpus(tmp_path_factory.mktemp("assets"))


def recipe_spec(assets: tuple[Path, Path], recipe: dict[str, object]) -> JobSpec:
    model_dir, corpus = assets
    request = JobRequest.model_validate(
        {
            "model": str(model_dir),
            "method": "2:4",
            "rho": 0.2,
            "recipe": recipe,
            "tokens": 12 * SEQ * BATCH,
            "dataset": {"path": str(corpus), "eval_tokens": 4 * SEQ},
            "checkpoints": 3,
            "seq_len": SEQ,
            "batch_size": BATCH,
            "lr": 1e-3,
            "calib_samples": 4,
            "seed": 3,
            "device": "cpu",
            "activation_checkpointing": True,
        }
    )
    return JobSpec.build(request, JobPaths(str(model_dir), corpus, None), cuda=False)


RECIPES = [
    {"kind": "lora", "rank": 4, "dropout": 0.1},
    {"kind": "distill", "temperature": 2.0, "alpha": 0.5},
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: str(r["kind"]))
def test_a_recipe_job_killed_after_a_checkpoint_resumes_to_the_same_losses(
    assets: tuple[Path, Path], tmp_path: Path, recipe: dict[str, object]
) -> None:
    spec = recipe_spec(assets, recipe)
    reference = prune_and_post_train(
        spec, workdir=tmp_path / "ref", artifact_dir=tmp_path / "ref-art", hooks=Recorder()
    )
    assert reference.status == "succeeded" and reference.artifact is not None
    work = tmp_path / "work"
    with pytest.raises(CrashError):
        prune_and_post_train(
            spec, workdir=work, artifact_dir=tmp_path / "art", hooks=Recorder(crash_at=1)
        )
    saved = latest_complete_state(work)
    assert saved is not None
    keys = set(SafeReader(str(saved / "dcp")).read_metadata().state_dict_metadata)
    moments = {k for k in keys if k.startswith("optim.state.") and k.endswith(".exp_avg")}
    if recipe["kind"] == "lora":  # the adapters' moments, and only theirs
        assert moments and all(".lora_" in k for k in moments)
        assert any(k.startswith("masks.") and ".base_layer." in k for k in keys)
    else:
        assert any(".embed_tokens." in k for k in moments)
    teacher = work / recipes.TEACHER_DIR
    assert teacher.is_dir() == (recipe["kind"] == "distill")
    hooks = Recorder()
    out = prune_and_post_train(spec, workdir=work, artifact_dir=tmp_path / "art", hooks=hooks)
    assert hooks.resumed and out.status == "succeeded" and out.artifact is not None
    assert len(hooks.points) == len(reference.points) - 1
    for a, b in zip(out.points, reference.points, strict=True):
        assert a.tokens == b.tokens and a.loss == pytest.approx(b.loss, abs=1e-5)
    assert out.points[-1].loss < reference.measured.loss_after_prune
    if recipe["kind"] == "lora":
        # What is measured is what is shipped: the merged artifact's held-out loss, measured
        # as the pipeline measures a checkpoint, is the last checkpoint's.
        shipped = AutoModelForCausalLM.from_pretrained(reference.artifact)
        blocks = job_splits(spec, load_tokenizer(reference.artifact)).eval
        loss, _ = OneDevice(spec).held_out_loss(shipped, blocks, BATCH)
        assert loss == pytest.approx(reference.points[-1].loss, abs=1e-6)

    # The artifact is a plain model of the pruned size, every 2:4 zero kept.
    art = AutoModelForCausalLM.from_pretrained(out.artifact)
    names = [n for n, _ in art.named_parameters()]
    assert not any("lora" in n or "base_layer" in n for n in names)
    sparsified = out.measured.details["sparsified_layers"]
    weights = dict(art.named_parameters())
    for name in sparsified:
        assert max_nonzeros_per_group(weights[f"{name}.weight"]) <= 2
