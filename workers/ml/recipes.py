"""The recovery recipes on the torch side (docs/jobs.md, "Recipes"; the names: app.core.recipes).

- LoRA: :func:`inject_lora` puts peft's adapters on the target projections of a model (on the
  meta device or not; the model keeps its class and module names, a target's weight becomes
  ``….q_proj.base_layer.weight``), every other weight frozen; :func:`adapted_masks` renames the
  pruning masks after the base weights; on a masked model (2:4, unstructured)
  :func:`mask_adapters` makes each adapted projection compute with the masked update,
  ``y = x (W + scale · (B @ A) ⊙ mask)ᵀ``, in training and evaluation alike, and
  :func:`merge_lora` folds the adapters into a plain model by the same formula, so the artifact
  is the model that was trained and measured and every pruned zero stays zero.
- Distillation: :func:`save_teacher` writes the dense model, before pruning, as a DCP state of
  its own in the work directory; :func:`load_teacher` builds it on the meta device, places it by
  the job's strategy (each rank its shard) and loads it, frozen; :class:`Distillation` is the
  Trainer's loss, ``alpha · T² · KL(teacher ‖ student at T) + (1 − alpha) · LM loss``, chunked
  over tokens as the LM loss is (:func:`linear_distill_loss`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor
from torch.nn import functional
from transformers import PreTrainedModel

from app.core import atomic
from app.schemas.jobs import LoraRecipe
from workers.ml import checkpoint, models
from workers.ml.evaluate import (
    IGNORE,
    HeadGrads,
    LMParts,
    compute_dtype,
    final_hidden_states,
    loss_chunk_tokens,
    next_token_labels,
)

if TYPE_CHECKING:
    from workers.ml.strategy import OneDevice

#: The one adapter a job's model carries (peft's default name; part of its parameter names).
ADAPTER = "default"
#: The teacher's DCP state in a distillation job's work directory (kept across attempts).
TEACHER_DIR = "teacher"
TEACHER_COMPLETE = "COMPLETE"

ModuleT = TypeVar("ModuleT", bound=nn.Module)


# --------------------------------------------------------------------------- LoRA


def lora_config(recipe: LoraRecipe) -> LoraConfig:
    return LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.scale_alpha,  # type: ignore[arg-type]  # a float scale works
        lora_dropout=recipe.dropout,
        target_modules=list(recipe.target_modules),
        bias="none",
    )


def inject_lora(model: nn.Module, recipe: LoraRecipe) -> None:
    """Put adapters on ``recipe.target_modules`` of ``model`` in place and freeze every other
    weight. peft initialises A by torch's RNG (Kaiming-uniform) and B to zero, so the model's
    function is unchanged; seed torch first for a reproducible start. Under
    ``models.parameters_on_meta`` the adapters are made on the meta device like the model."""
    inject_adapter_in_model(lora_config(recipe), model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)


def adapted_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keep-masks keyed by the adapted model's names: a target's ``….weight`` is now
    ``….base_layer.weight``."""
    names = {name for name, _ in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name in names:
            out[name] = mask
            continue
        owner, _, leaf = name.rpartition(".")
        renamed = f"{owner}.base_layer.{leaf}"
        if renamed not in names:
            raise KeyError(f"mask for unknown parameter {name!r}")
        out[renamed] = mask
    return out


def adapted_model(config: Any, recipe: LoraRecipe) -> PreTrainedModel:
    """An empty model of ``config`` with the recipe's adapters, on the CPU (a gathered state
    dict of the trained model fills it in)."""
    model = models.model_from_config(config)
    inject_lora(model, recipe)
    return model


def masked_delta(
    lora_a: torch.Tensor, lora_b: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scale · (B @ A) ⊙ mask`` in the adapters' dtype: the update of a masked weight, the
    same operations in training (:func:`mask_adapters`) and in the merge (:func:`merge_lora`)."""
    return (lora_b @ lora_a) * scale * mask


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor usable in a plain matmul beside a layer's gathered weights: a sharded one
    (DTensor) gathered whole, a collective every rank runs; a local one as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class _MaskedLoraLinear(torch.autograd.Function):
    """``x (W + scale · (B @ A) ⊙ M)ᵀ + bias``, or without ``W`` the adapter term alone, its
    matmul in ``dtype`` (autocast's, as the merged model's ``nn.Linear`` runs it), the update in
    the adapters' float32.

    Nothing weight-sized is kept for the backward: it forms ``W + update`` again from the saved
    parameters (on FSDP2 the layer's gathered ones) and the mask (a sharded mask is gathered
    again: no rank holds the whole mask of more than the projection it runs). The gradients
    are those of autograd through the formula: ``x`` gets ``g (W + update)``, ``A`` and ``B``
    get theirs from the dense weight-shaped ``scale · (gᵀ x) ⊙ M``; ``W`` and the bias none
    (frozen).
    """

    @staticmethod
    def forward(  # type: ignore[override]  # noqa: PLR0917
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        mask: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        gathered = whole(mask)
        with torch.autocast(x.device.type, enabled=False):
            update = masked_delta(lora_a, lora_b, gathered, scale)
            w = update if weight is None else weight + update
            b = None if bias is None else bias.to(dtype)
            out = functional.linear(x.to(dtype), w.to(dtype), b)
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        # A local mask is kept (it lives beside the model anyway); a sharded one is not.
        ctx.mask, ctx.kept = mask, gathered if gathered is mask else None
        ctx.scale, ctx.dtype = scale, dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, lora_a, lora_b = ctx.saved_tensors
        want_x, want_w, want_bias, want_a, want_b = ctx.needs_input_grad[:5]
        if want_w or want_bias:
            raise RuntimeError("a masked adapter's base weight and bias are frozen")
        mask = ctx.kept if ctx.kept is not None else whole(ctx.mask)
        dtype, scale = ctx.dtype, ctx.scale
        grad_x = grad_a = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(dtype).reshape(-1, grad_out.shape[-1])
            if want_x:
                update = masked_delta(lora_a, lora_b, mask, scale)
                w = update if weight is None else weight + update
                grad_x = (g @ w.to(dtype)).reshape(x.shape).to(x.dtype)
                del update, w
            if want_a or want_b:
                # The dense weight-shaped gradient, as full training forms it, then masked.
                grad_update = (g.t() @ x.to(dtype).reshape(-1, x.shape[-1])).float()
                grad_update = grad_update.mul_(mask).mul_(scale).to(lora_a.dtype)
                if want_a:
                    grad_a = lora_b.t() @ grad_update
                if want_b:
                    grad_b = grad_update @ lora_a.t()
        return grad_x, None, None, grad_a, grad_b, None, None, None


def lora_parts(module: LoraLinear) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, float]:
    """An adapted projection's base layer, A, B and scale."""
    base, lora_a, lora_b = module.base_layer, module.lora_A[ADAPTER], module.lora_B[ADAPTER]
    assert isinstance(base, nn.Linear)
    assert isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)
    return base, lora_a.weight, lora_b.weight, float(module.scaling[ADAPTER])


@torch.compiler.disable  # type: ignore[untyped-decorator]  # a graph break: runs eagerly
def _masked_forward(
    module: LoraLinear, mask: torch.Tensor, x: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """The forward of an adapted projection whose base weight has a keep-mask (installed by
    :func:`mask_adapters` in place of peft's)."""
    base, lora_a, lora_b, scale = lora_parts(module)
    if module.disable_adapters or ADAPTER not in module.active_adapters:
        return base(x, *args, **kwargs)  # type: ignore[no-any-return]
    dropout = module.lora_dropout[ADAPTER]
    dtype = compute_dtype(x.device.type, base.weight)
    if isinstance(dropout, nn.Identity) or not dropout.training:
        # One matmul with the merged weight: what the artifact's projection computes.
        return _MaskedLoraLinear.apply(  # type: ignore[no-any-return, no-untyped-call]
            x, base.weight, base.bias, lora_a, lora_b, mask, scale, dtype
        )
    term = _MaskedLoraLinear.apply(  # type: ignore[no-untyped-call]
        dropout(x), None, None, lora_a, lora_b, mask, scale, dtype
    )
    return base(x, *args, **kwargs) + term  # type: ignore[no-any-return]


def mask_adapters(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Make every adapted projection of ``model`` whose base weight has a keep-mask in
    ``masks`` (keyed by the adapted names, laid out like the weights: DTensors when sharded)
    compute with the masked update ``scale · (B @ A) ⊙ mask`` instead of peft's dense one;
    return how many. Call it once the model is placed and the masks hold their values; the
    model's parameters, names and state are unchanged (only the forward of those modules)."""
    count = 0
    for name, module in model.named_modules():
        mask = masks.get(f"{name}.base_layer.weight")
        if isinstance(module, LoraLinear) and mask is not None:
            module.forward = partial(_masked_forward, module, mask)  # type: ignore[method-assign]
            count += 1
    return count


def merge_lora(model: ModuleT, masks: dict[str, torch.Tensor]) -> ModuleT:
    """Fold every adapter of ``model`` into its base weight and put the base layer back in its
    place: a plain model of the same class and names. The delta ``scale · B @ A`` is multiplied
    by the base weight's keep-mask (``masks``, keyed by the adapted names), so every weight that
    pruning zeroed stays zero (a plain merge would fill the pattern in)."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    with torch.no_grad():
        for name, module in wrapped:
            base, lora_a, lora_b, scale = lora_parts(module)
            mask = masks.get(f"{name}.base_layer.weight")
            if mask is None:
                delta = module.get_delta_weight(ADAPTER)
            else:  # as the masked forward forms it (mask_adapters)
                delta = masked_delta(lora_a, lora_b, mask.to(base.weight.device), scale)
            base.weight.add_(delta.to(base.weight.dtype))
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, base)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


# --------------------------------------------------------------------------- the teacher


def teacher_dir(workdir: Path) -> Path:
    return workdir / TEACHER_DIR


def save_teacher(model: PreTrainedModel, workdir: Path) -> Path:
    """Write ``model`` (the dense model, before pruning) as the teacher's DCP state with its
    config, atomically: built under a temporary name, then renamed into place with its COMPLETE
    marker. One process, no collective. Every attempt after reads it (:func:`load_tensors`)."""
    final = teacher_dir(workdir)
    with atomic.building_dir(final) as tmp:
        checkpoint.save_tensors(tmp, {"model": get_model_state_dict(model)}, no_dist=True)
        model.config.save_pretrained(tmp / "model")
        (tmp / TEACHER_COMPLETE).write_text("teacher\n")
    return final


def load_teacher(workdir: Path, strategy: OneDevice) -> PreTrainedModel:
    """The teacher saved by :func:`save_teacher`, built on the meta device, placed by
    ``strategy`` (sharded like the student: each rank materialises and reads only its shards),
    frozen and in eval mode."""
    source = teacher_dir(workdir)
    if not (source / TEACHER_COMPLETE).is_file():
        raise FileNotFoundError(f"{source}: the distillation teacher was not saved")
    with models.parameters_on_meta():
        teacher = models.model_from_config(source / "model")
    teacher.requires_grad_(False)
    strategy.parallelize(teacher)
    template = {"model": get_model_state_dict(teacher)}
    loaded = checkpoint.load_tensors(source, template, no_dist=strategy.world == 1)
    set_model_state_dict(teacher, loaded["model"])
    nn.Module.eval(teacher)
    return teacher


# --------------------------------------------------------------------------- the distillation loss


class _LinearDistill(torch.autograd.Function):
    """``alpha · T² · KL(p_t ‖ q_s) + (1 − alpha) · CE`` per token, its mean over the labelled
    positions, from the student's and the teacher's final hidden states chunk by chunk.

    As ``workers.ml.evaluate``'s linear cross-entropy: each chunk's float32 logits of both
    models are made, their losses and the gradients of the student's hidden states and head
    taken at once, then dropped; the backward only scales them. The gradient of the logits is
    ``(1 − alpha)(softmax(s) − onehot) + alpha · T · (softmax(s/T) − softmax(t/T))``.
    """

    @staticmethod
    def forward(  # type: ignore[override]  # noqa: PLR0917
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        t_hidden: torch.Tensor,
        t_weight: torch.Tensor,
        t_bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk: int,
        dtype: torch.dtype,
        temperature: float,
        alpha: float,
    ) -> torch.Tensor:
        grads = HeadGrads(ctx, hidden, weight, bias)
        temp = float(temperature)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            tw = t_weight.to(dtype)
            tb = t_bias.to(dtype) if t_bias is not None else None
            valid = labels != IGNORE
            scale = valid.sum().clamp(min=1).to(torch.float32).reciprocal()
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                stop = start + chunk
                h = hidden[start:stop].to(dtype)
                target = labels[start:stop].clamp(min=0)
                keep = valid[start:stop].to(torch.float32)
                logits = functional.linear(h, w, b).float()
                teacher = functional.linear(t_hidden[start:stop].to(dtype), tw, tb).float()
                log_p = torch.log_softmax(teacher.div_(temp), dim=-1)
                del teacher
                log_q = torch.log_softmax(logits / temp, dim=-1)
                p = log_p.exp()
                kl = (p * (log_p - log_q)).sum(-1)
                del log_p
                lse = torch.logsumexp(logits, dim=-1)
                ce = lse - logits.gather(1, target[:, None]).squeeze(1)
                total += ((alpha * temp * temp * kl + (1.0 - alpha) * ce) * keep).sum()
                if not grads.wanted:
                    continue
                grad = logits.sub_(lse[:, None]).exp_().mul_(1.0 - alpha)
                grad.scatter_add_(1, target[:, None], torch.full_like(lse, alpha - 1.0)[:, None])
                grad.add_(log_q.exp_().sub_(p).mul_(alpha * temp))
                grad.mul_((keep * scale)[:, None])
                grads.add(slice(start, stop), grad.to(dtype), h, w)
        grads.save(ctx)
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return HeadGrads.backward(ctx, grad_loss, others=8)


def linear_distill_loss(
    hidden: torch.Tensor,
    head: nn.Linear,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Linear,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    chunk: int | None = None,
) -> torch.Tensor:
    """The distillation loss (module docstring) of ``[tokens, hidden]`` states against
    ``labels``, mean over positions whose label is not ``IGNORE``; differentiable in the
    student's hidden states and head, the teacher's taken as constants. Half the LM loss's chunk
    by default: a chunk holds about five float32 logit tensors here instead of two."""
    chunk = chunk or max(1, loss_chunk_tokens(head.out_features) // 2)
    dtype = compute_dtype(hidden.device.type, head.weight)
    loss: torch.Tensor = _LinearDistill.apply(  # type: ignore[no-untyped-call]
        hidden,
        head.weight,
        head.bias,
        teacher_hidden.detach(),
        whole(teacher_head.weight).detach(),
        None if teacher_head.bias is None else whole(teacher_head.bias).detach(),
        labels,
        chunk,
        dtype,
        temperature,
        alpha,
    )
    return loss


class Distillation:
    """The Trainer's loss for a distillation job: the frozen teacher's forward under
    ``torch.no_grad()`` (in the autocast the Trainer runs the loss in), then
    :func:`linear_distill_loss` against the student's final hidden states."""

    def __init__(self, teacher: nn.Module, *, temperature: float, alpha: float) -> None:
        self.teacher = teacher
        self.teacher_parts = LMParts(teacher)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, model: nn.Module, input_ids: torch.Tensor, parts: LMParts) -> torch.Tensor:
        with torch.no_grad():
            t_hidden, _ = final_hidden_states(self.teacher, input_ids, self.teacher_parts)
        hidden, no_logits = final_hidden_states(model, input_ids, parts)
        labels = next_token_labels(input_ids).reshape(-1)
        width = hidden.shape[-1]
        loss = linear_distill_loss(
            hidden.reshape(-1, width),
            parts.head,
            t_hidden.reshape(-1, t_hidden.shape[-1]),
            self.teacher_parts.head,
            labels,
            temperature=self.temperature,
            alpha=self.alpha,
        )
        reshard = getattr(self.teacher, "reshard", None)
        if callable(reshard):  # FSDP2 keeps a root's weights gathered after a forward
            reshard()
        if no_logits.requires_grad:  # FSDP2's hooks on the root's outputs (evaluate.py)
            loss = loss + no_logits.sum() * 0.0
        return loss
