"""Held-out loss: mean token cross-entropy in nats, with its standard error (docs/law.md §3).

The loss of a causal LM is computed here for training and evaluation alike, from the final
hidden states in chunks of tokens through the LM head (:func:`causal_lm_loss`,
:func:`token_losses`): each chunk's logits are made, soft-maxed in float32 and dropped before the
next, so the float32 logits of a whole batch (4 bytes × tokens × vocabulary: 4 GiB for 8k tokens
of a 128k vocabulary, 12 bytes a logit with the backward's buffers) never exist, as in
torchtune's chunked cross-entropy and Liger's fused linear cross-entropy. The values equal the
Hugging Face loss on the full logits (``model(input_ids, labels=input_ids).loss``) to float32
rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from workers.ml import models

#: Label of a position whose next token is not predicted (the last of each block).
IGNORE = -100
#: Float32 logits of one chunk at most about this many bytes, within 1k–4k tokens a chunk.
_CHUNK_LOGIT_BYTES = 1 << 28


def autocast_context(
    device: torch.device | str, dtype: torch.dtype | None, *, cache: bool = True
) -> contextlib.AbstractContextManager[object]:
    """Mixed-precision context for `dtype` on `device`; a no-op for float32 or None.

    ``cache=False`` for a forward without a backward: autocast's cache would keep the bf16 copy
    of every weight until the context ends (about 15 GiB at 8B), where without it each copy goes
    with its matmul. The values are the same either way (the same casts)."""
    dev = torch.device(device)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype, cache_enabled=cache)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- the chunked loss


def loss_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk of the loss: float32 logits of at most ~256 MiB a chunk, and between 1,024
    and 4,096 tokens (1,024 for vocabularies of 64k and more: 512 MiB for Llama 3's 128k)."""
    return max(1024, min(4096, _CHUNK_LOGIT_BYTES // (4 * max(1, vocab_size))))


class LMParts:
    """The two halves of a causal LM that the chunked loss calls: the decoder (the module that
    owns the decoder layers: embeddings, layers, final norm; ``model.model`` in Llama, Qwen2, Qwen3
    and Mistral) and the LM head (``get_output_embeddings()``, tied or not), found by structure."""

    def __init__(self, model: nn.Module) -> None:
        self.decoder = models.decoder_layers_owner(model)[0]
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if not isinstance(head, nn.Linear):
            raise models.UnsupportedModelError(
                f"{type(model).__name__}: no linear LM head (get_output_embeddings)"
            )
        self.head = head


def final_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, parts: LMParts
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final (normed) hidden states ``[batch, seq, hidden]`` of ``input_ids``, and the
    model's own logits for none of the positions (``[batch, 0, vocab]``).

    The whole model is called, not its decoder alone: under FSDP2 the root module's hooks
    gather the embeddings, final norm and head (the root's parameters stay gathered after its
    forward until the backward is done, so the head can then be called chunk by chunk), and a
    compiled or checkpointed layer runs as the model runs it. A forward hook on the decoder keeps
    its output; ``logits_to_keep`` with no position makes the model's own head compute nothing.
    No KV cache is built (``use_cache=False``).
    """
    kept: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        kept.append(hidden if isinstance(hidden, torch.Tensor) else output[0])

    handle = parts.decoder.register_forward_hook(keep)
    try:
        no_position = torch.empty(0, dtype=torch.long, device=input_ids.device)
        out = model(input_ids=input_ids, use_cache=False, logits_to_keep=no_position)
    finally:
        handle.remove()
    if len(kept) != 1:
        raise RuntimeError(f"the decoder ran {len(kept)} times in one forward pass")
    logits = out.logits if hasattr(out, "logits") else out[0]
    return kept[0], logits


def next_token_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Each position's label, the next token; the last position of each block is ``IGNORE``."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def compute_dtype(device_type: str, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmuls run in: autocast's where it is on, else the weight's."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Float32 logits of one chunk, the matmul in ``dtype`` as autocast would run it."""
    return functional.linear(hidden.to(dtype), weight, bias).float()


class HeadGrads:
    """The gradients a chunked head loss takes in its forward (of the hidden states, the head's
    weight and its bias, each only where autograd wants it), filled chunk by chunk from the
    chunk's gradient of the logits; the backward only scales them (:meth:`backward`)."""

    def __init__(
        self, ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        self.h = torch.zeros_like(hidden) if want_h else None
        self.w = torch.zeros_like(weight) if want_w else None
        self.b = torch.zeros_like(bias) if want_b and bias is not None else None

    @property
    def wanted(self) -> bool:
        return self.h is not None or self.w is not None or self.b is not None

    def add(self, rows: slice, grad: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> None:
        """Take one chunk's gradient of the logits (``rows`` of the hidden states, whose values
        ``h`` met the head weight ``w``, both in the compute dtype)."""
        if self.h is not None:
            self.h[rows] = grad @ w
        if self.w is not None:
            self.w += grad.t() @ h
        if self.b is not None:
            self.b += grad.sum(0)

    def save(self, ctx: Any) -> None:
        ctx.save_for_backward(self.h, self.w, self.b)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, others: int) -> tuple[torch.Tensor | None, ...]:
        """The saved gradients times the incoming one, then None for the ``others`` inputs. In
        place: the buffers belong to this graph alone, and it is differentiated once."""
        saved = ctx.saved_tensors
        out = [g.mul_(grad_loss) if g is not None else None for g in saved]
        return (*out, *([None] * others))


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, chunk by chunk.

    The forward makes each chunk's logits, its float32 softmax and, when a gradient is wanted,
    the gradients of the chunk's hidden states and of the head at once (the softmax minus the
    one-hot label, times 1/tokens), then drops the chunk; the backward only scales them by the
    incoming gradient. So nothing of size tokens × vocabulary outlives a chunk, and no logit is
    recomputed (what Liger's fused linear cross-entropy does). One backward per forward.
    """

    @staticmethod
    def forward(  # type: ignore[override]  # noqa: PLR0917 (apply passes its inputs by position)
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        grads = HeadGrads(ctx, hidden, weight, bias)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            valid = labels != IGNORE
            count = valid.sum().clamp(min=1).to(torch.float32)
            scale = count.reciprocal()
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                stop = start + chunk
                h = hidden[start:stop].to(dtype)
                target = labels[start:stop].clamp(min=0)
                keep = valid[start:stop]
                logits = functional.linear(h, w, b).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, target[:, None]).squeeze(1)
                total += ((lse - picked) * keep).sum()
                if not grads.wanted:
                    continue
                # d loss / d logits = (softmax - one-hot) / tokens, zero where ignored; in place.
                grad = logits.sub_(lse[:, None]).exp_()
                grad.scatter_add_(1, target[:, None], -torch.ones_like(lse)[:, None])
                grad.mul_((keep.to(torch.float32) * scale)[:, None])
                grads.add(slice(start, stop), grad.to(dtype), h, w)
        grads.save(ctx)
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return HeadGrads.backward(ctx, grad_loss, others=3)


def linear_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    labels: torch.Tensor,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``head(hidden)`` against ``labels`` over the positions whose
    label is not ``IGNORE``; ``hidden`` is ``[tokens, hidden]``, ``labels`` ``[tokens]``.

    Differentiable (hidden states, head weight and bias); the float32 logits of at most ``chunk``
    tokens exist at a time (default :func:`loss_chunk_tokens`). Under autocast the head's matmuls
    run in autocast's dtype, as ``head(hidden)`` would.
    """
    chunk = chunk or loss_chunk_tokens(head.out_features)
    dtype = compute_dtype(hidden.device.type, head.weight)
    loss: torch.Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        hidden, head.weight, head.bias, labels, chunk, dtype
    )
    return loss


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    parts: LMParts | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``[batch, seq]`` blocks: the value of
    ``model(input_ids=input_ids, labels=input_ids).loss`` (and its gradients), computed from the
    final hidden states chunk by chunk (module docstring). ``parts`` saves finding the decoder
    and head again on every call."""
    parts = parts or LMParts(model)
    hidden, no_logits = final_hidden_states(model, input_ids, parts)
    labels = next_token_labels(input_ids).reshape(-1)
    loss = linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), parts.head, labels, chunk=chunk
    )
    if no_logits.requires_grad:
        # The model's own (empty) output joins the graph, so that the hooks FSDP2 puts on the
        # root module's outputs run in the backward as they do for the full-logit loss.
        loss = loss + no_logits.sum() * 0.0
    return loss


def token_losses(
    hidden: torch.Tensor,
    head: nn.Linear,
    labels: torch.Tensor,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of each position (float32, 0 where the label is ``IGNORE``), chunk by chunk;
    for evaluation (no gradient)."""
    chunk = chunk or loss_chunk_tokens(head.out_features)
    dtype = compute_dtype(hidden.device.type, head.weight)
    out = torch.empty(labels.shape, dtype=torch.float32, device=hidden.device)
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            stop = start + chunk
            logits = _chunk_logits(hidden[start:stop], head.weight, head.bias, dtype)
            out[start:stop] = functional.cross_entropy(
                logits, labels[start:stop], ignore_index=IGNORE, reduction="none"
            )
    return out


# --------------------------------------------------------------------------- held-out loss


def eval_loss(
    model: nn.Module,
    eval_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy (nats) over every predicted token of `eval_ids`, and its standard error.

    Each `[n, seq_len]` block predicts tokens 1..seq_len-1 from their prefixes; all blocks
    predict the same number of tokens, so the token mean equals the mean of the per-block
    means. The standard error is taken over blocks (std of block means / sqrt(n)): tokens of
    one block are correlated, so a per-token error would understate the noise.
    """
    means = block_losses(
        model, eval_ids, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype
    )
    n = means.numel()
    mean = float(means.mean())
    stderr = float(means.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return mean, stderr


def block_losses(
    model: nn.Module,
    eval_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each ``[n, seq_len]`` block (float64, on the CPU).

    Float32 cross-entropy from the final hidden states, chunk by chunk (module docstring): a
    bf16 log-softmax over a large vocabulary would lose ~1e-2 nats. ``no_grad`` rather than
    ``inference_mode``: a sharded (FSDP) model gathers its parameters for the forward pass and
    must be able to train on them again afterwards.
    """
    if eval_ids.dim() != 2 or eval_ids.shape[1] < 2:
        raise ValueError("eval_ids must be [n, seq_len] with seq_len >= 2")
    dev = torch.device(device)
    parts = LMParts(model)
    block_means: list[torch.Tensor] = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, eval_ids.shape[0], batch_size):
            batch = eval_ids[start : start + batch_size].to(dev, non_blocking=True)
            with autocast_context(dev, autocast_dtype, cache=False):
                hidden, _ = final_hidden_states(model, batch, parts)
                losses = token_losses(
                    hidden.reshape(-1, hidden.shape[-1]),
                    parts.head,
                    next_token_labels(batch).reshape(-1),
                )
            per_token = losses.view(batch.shape)[:, :-1]
            block_means.append(per_token.mean(dim=1).double())
    return torch.cat(block_means).cpu()
