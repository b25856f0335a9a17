"""Memory per device for full post-training of Llama-shaped models, on one device or FSDP-sharded.

The project's training setup: fp32 parameters (the master weights), bf16 compute, AdamW with
fp32 ``exp_avg`` and ``exp_avg_sq`` (``workers.ml.train``). Two ways to run it are modelled:

- **Trainer** (one device, no FSDP): fp32 parameters under ``torch.autocast(bf16)``. Autocast
  keeps a bf16 copy of every linear weight from the forward until that layer's backward, and the
  residual stream stays fp32.
- **FSDP** over ``N`` devices (ZeRO-3 style, ``fully_shard`` per decoder layer then the model,
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``, no autocast: the job's
  ``Sharded`` strategy, ``workers/ml/strategy.py``): each device holds 1/N of the fp32
  parameters, gradients and AdamW states, and gathers bf16 copies of the parameters it is
  computing with. Every device runs its own micro-batch, so activations do not shrink with N.

Bytes per device, P parameters, P_layer per decoder layer, P_root = embeddings + head + final
norm (what ``fully_shard(model)`` owns), T = micro_batch x seq_len tokens:

    parameters   4 P / N                      fp32 master weights (N = 1 for the Trainer)
    optimizer    8 P / N                      AdamW exp_avg + exp_avg_sq, fp32
    gradients    4 P / N                      fp32, filled during backward, freed by zero_grad
    FSDP buffers 2 P_root + 10 P_layer        the root gathered in bf16 for the whole step (FSDP2
                                              does not reshard the root after forward), two layers
                                              gathered in bf16 (current + prefetched), one layer's
                                              unsharded gradients in bf16 and their fp32 copy for
                                              the reduce-scatter (2 + 4 bytes)
    activations  see below, per micro-batch

Gradients and activations peak at different times (activations at the start of backward, before
any gradient of the step exists; gradients at its end), so the total is the parameters, the
optimizer states and the buffers plus the largest of (activations + gradients) over the stages
of backward: the loss, each decoder layer, the end (under FSDP the end also holds the root's
gradients unsharded, in bf16 and in fp32 for the reduce-scatter: 6 P_root). With gradient
accumulation the gradients of earlier micro-batches stay, so they are added to every stage.

**Activations.** Counted the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", MLSys 2023, arXiv:2205.05198, §4.1) count them — every tensor
autograd saves in a layer — but for a Llama decoder layer (RMSNorm, GQA, RoPE, SwiGLU, no
dropout) as Hugging Face's ``LlamaForCausalLM`` runs it, instead of their GPT layer
(``s·b·h·(34 + 5·a·s/h)`` bytes). Bytes saved per token and layer, with h = hidden, q = heads x
head_dim, k = kv_heads x head_dim, f = intermediate, a = heads:

    bf16 parameters (FSDP):  16 h + 4 q + 4 k + 8 f + 4 a + 8
    fp32 params + autocast:  26 h + 4 q + 4 k + 8 f + 4 a + 8

(each RMSNorm saves its input upcast to fp32 and the normalised tensor; SDPA saves q, k and v
after RoPE at their GQA sizes, its output and the fp32 log-sum-exp; SwiGLU saves the gate and up
outputs, the SiLU output and their product; under autocast each projection also saves its own
bf16 cast of its input). ``attention="eager"`` adds the ``6·a·s`` bytes of the fp32 softmax
and its bf16 cast, and saves k and v repeated to all heads (Korthikanti's ``5·a·s`` term
without dropout). Flash/SDPA attention (the Hugging Face default) keeps no s x s matrix.

The head: the final norm and the head's input, token ids and labels, and the loss. The
cross-entropy upcasts the logits to fp32 and saves fp32 log-probabilities (4 bytes per logit);
its backward holds, besides them, the fp32 gradient of the log-probabilities and of the logits:
**12 bytes per logit** (T x vocab), which dominates for 128k vocabularies.

Activation checkpointing (per decoder layer) saves only each layer's input (2 h bytes a token
in bf16, 4 h under autocast) and recomputes one layer at a time in backward. Each layer's
backward also holds a workspace of gradients of its largest intermediates, ``6 f + 8 h`` bytes
a token (a bound measured on CPU, see below).

Checked on CPU at small scale in ``tests/benchmarks/test_memory_model.py``: the saved bytes
per layer equal the formulas above exactly (``torch.autograd.graph.saved_tensors_hooks`` on
a tiny ``LlamaForCausalLM``/``Qwen2ForCausalLM``), and the peak of one forward + backward
(torch profiler memory timeline) is within a few percent of :func:`dynamic_peak`. Not modelled:
the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation (the fit check keeps 10%
of the device free for them), FSDP's all-gather inputs (2 P_layer / N), and RoPE's cos/sin
beyond one copy per micro-batch.

    python benchmarks/memory_model.py                      # the Markdown tables
    python benchmarks/memory_model.py --update-docs        # rewrite them in docs/scaling.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

GIB = 1024**3
MIB = 1024**2

Attention = Literal["sdpa", "eager"]

#: Bytes per logit at the loss's backward: fp32 log-probs (saved) + fp32 gradient of the
#: log-probs + fp32 gradient of the logits.
LOGIT_BYTES_SAVED = 4
LOGIT_BYTES_TRANSIENT = 8

#: Fraction of a device's memory an estimate may use; the rest is for the CUDA context, library
#: workspaces and allocator fragmentation.
USABLE_FRACTION = 0.9

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
BEGIN = "<!-- memory-model:begin (generated by benchmarks/memory_model.py; do not edit) -->"
END = "<!-- memory-model:end -->"


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-architecture decoder (Qwen2: the same with q/k/v biases)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    head_dim_: int | None = None
    model_type: str = "llama"
    #: The published total, as announced (model card / hub), e.g. "1.24B".
    published: str = ""
    source: str = ""

    @property
    def head_dim(self) -> int:
        """Per-head width (``hidden // heads`` unless the config states it)."""
        return self.head_dim_ or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the query projection's output."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection's output."""
        return self.kv_heads * self.head_dim

    @property
    def layer_linear_params(self) -> int:
        """Weights of one layer's seven projections (what autocast copies to bf16)."""
        h, q, k, f = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return h * q + 2 * h * k + q * h + 3 * h * f

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: projections, q/k/v biases, two RMSNorm gains."""
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return self.layer_linear_params + bias + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        """The token embedding table."""
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """The output head's own parameters (0 when tied to the embeddings)."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def root_params(self) -> int:
        """What ``fully_shard(model)`` owns once every layer is sharded on its own."""
        return self.embedding_params + self.head_params + self.hidden

    @property
    def n_params(self) -> int:
        """Every parameter, a tied head counted once."""
        return self.root_params + self.layers * self.layer_params

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matrix product: all but an untied input embedding
        (a lookup) — the N of the 6·N FLOPs per token."""
        return self.n_params - (0 if self.tied else self.embedding_params)

    def hf_config(self) -> dict[str, Any]:
        """The shape as a Hugging Face ``config.json`` mapping."""
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "head_dim": self.head_dim,
        }


_HF = "https://huggingface.co/{}/blob/main/config.json"

#: Published shapes (each model's ``config.json`` on the Hugging Face hub).
SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape(
            "SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, tied=True,
            published="134.5M", source=_HF.format("HuggingFaceTB/SmolLM2-135M"),
        ),
        ModelShape(
            "Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, tied=True, qkv_bias=True,
            model_type="qwen2", published="0.49B", source=_HF.format("Qwen/Qwen2.5-0.5B"),
        ),
        ModelShape(
            "Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, tied=True,
            published="1.24B", source=_HF.format("meta-llama/Llama-3.2-1B"),
        ),
        ModelShape(
            "Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, tied=True, qkv_bias=True,
            model_type="qwen2", published="1.54B", source=_HF.format("Qwen/Qwen2.5-1.5B"),
        ),
        ModelShape(
            "Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, tied=True, qkv_bias=True,
            model_type="qwen2", published="3.09B", source=_HF.format("Qwen/Qwen2.5-3B"),
        ),
        ModelShape(
            "Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, tied=True,
            published="3.21B", source=_HF.format("meta-llama/Llama-3.2-3B"),
        ),
        ModelShape(
            "Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, tied=False,
            published="8.03B", source=_HF.format("meta-llama/Llama-3.1-8B"),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """How a training step runs."""

    devices: int = 1
    seq_len: int = 2048
    micro_batch: int = 1
    checkpointing: bool = False
    #: True: FSDP over ``devices`` (bf16 parameters in compute); False: the single-device
    #: Trainer (fp32 parameters under autocast), ``devices`` must be 1.
    fsdp: bool = True
    grad_accum: int = 1
    attention: Attention = "sdpa"

    def __post_init__(self) -> None:
        if self.devices < 1 or self.seq_len < 1 or self.micro_batch < 1 or self.grad_accum < 1:
            raise ValueError("devices, seq_len, micro_batch and grad_accum must be >= 1")
        if not self.fsdp and self.devices != 1:
            raise ValueError("the Trainer without FSDP runs on one device")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be sdpa or eager, not {self.attention!r}")

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch."""
        return self.micro_batch * self.seq_len


# --------------------------------------------------------------------------- activations


def layer_activation_bytes(
    shape: ModelShape, *, autocast: bool, seq_len: int, attention: Attention = "sdpa"
) -> int:
    """Bytes one decoder layer saves for backward, per token (no checkpointing)."""
    h, q, k, f, a = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate, shape.heads
    # Two RMSNorms: the fp32 input and the normalised tensor (fp32 under autocast, else bf16),
    # plus a 4-byte rstd each; the projections' inputs (one bf16 cast per projection under
    # autocast, the shared bf16 tensor otherwise).
    norms = 2 * ((4 + (4 if autocast else 2)) * h + 4)
    proj_inputs = (3 + 2) * 2 * h if autocast else (1 + 1) * 2 * h
    attn = 2 * q + 2 * k + 2 * k + 2 * q + 4 * a  # q, k, v after RoPE, output, log-sum-exp
    if attention == "eager":
        # k and v repeated to every head; the fp32 softmax and its bf16 cast; no log-sum-exp.
        attn += 4 * (q - k) - 4 * a + 6 * a * seq_len
    mlp = 4 * 2 * f  # gate and up outputs, SiLU output, their product (down's input)
    return norms + proj_inputs + attn + mlp


def head_activation_bytes(shape: ModelShape, *, autocast: bool) -> int:
    """Bytes saved per token outside the layers: final norm, head input, ids and labels, and
    the fp32 log-probabilities of the loss."""
    final_norm = (4 + (4 if autocast else 2)) * shape.hidden + 4
    return final_norm + 2 * shape.hidden + 8 + 8 + LOGIT_BYTES_SAVED * shape.vocab


def layer_workspace_bytes(shape: ModelShape) -> int:
    """Gradient temporaries of one layer's backward, per token (a bound, measured on CPU)."""
    return 6 * shape.intermediate + 8 * shape.hidden


def rope_bytes(shape: ModelShape, *, autocast: bool, seq_len: int) -> int:
    """RoPE's cos and sin, one copy per micro-batch (shared by the layers)."""
    return 2 * seq_len * shape.head_dim * (4 if autocast else 2)


def checkpoint_input_bytes(shape: ModelShape, *, autocast: bool) -> int:
    """What a checkpointed layer keeps per token: its input (the residual stream)."""
    return (4 if autocast else 2) * shape.hidden


@dataclass(frozen=True)
class Precision:
    """What the dtypes of a run decide about its memory."""

    #: fp32 parameters under autocast (the Trainer), else bf16 parameters in compute.
    autocast: bool
    #: Bytes of gradient per parameter held on this device (4 / N: fp32, sharded).
    grad_bytes: float
    #: The head weight's gradient from the head's backward to the end of backward.
    head_grad_bytes: int
    #: A transient at the end of backward (FSDP: the root's unsharded bf16 gradients).
    end_extra: int

    @classmethod
    def of(cls, shape: ModelShape, setup: Setup) -> Precision:
        """The Trainer's (fp32 gradients, fp32 head gradient) or FSDP's (fp32 gradient shards,
        the head's gradient bf16 and unsharded until the root's reduce-scatter)."""
        if setup.fsdp:
            # The root's gradients, unsharded in bf16 and in fp32 for its reduce-scatter, at
            # the end of backward.
            return cls(False, 4 / setup.devices, 2 * shape.vocab * shape.hidden,
                       6 * shape.root_params)  # fmt: skip
        return cls(True, 4.0, 4 * shape.vocab * shape.hidden, 0)

    @classmethod
    def bf16_model(cls, shape: ModelShape) -> Precision:
        """A model cast to bf16 and trained without FSDP: bf16 gradients (the CPU checks)."""
        return cls(False, 2.0, 2 * shape.vocab * shape.hidden, 0)


@dataclass(frozen=True)
class Stages:
    """Activations and gradients alive at each stage of backward, bytes per device."""

    loss: int  # the cross-entropy's backward, before any parameter gradient exists
    first_layer: int  # the backward of the last decoder layer
    last_layer: int  # the backward of the first decoder layer
    end: int  # every gradient, no activation left

    @property
    def peak(self) -> int:
        """The largest stage."""
        return max(self.loss, self.first_layer, self.last_layer, self.end)


def stages(shape: ModelShape, setup: Setup, precision: Precision | None = None) -> Stages:
    """Activations + gradients at each stage of one micro-batch's backward.

    ``precision`` defaults to the setup's (:meth:`Precision.of`).
    """
    pr = Precision.of(shape, setup) if precision is None else precision
    T, L, ac, ckpt = setup.tokens, shape.layers, pr.autocast, setup.checkpointing
    A = layer_activation_bytes(shape, autocast=ac, seq_len=setup.seq_len, attention=setup.attention)
    W = layer_workspace_bytes(shape)
    H = head_activation_bytes(shape, autocast=ac)
    rope = rope_bytes(shape, autocast=ac, seq_len=setup.seq_len)
    layer_input = checkpoint_input_bytes(shape, autocast=ac)
    stored = layer_input if ckpt else A  # what each layer keeps until its backward
    # What the layer being back-propagated holds: its stored tensors, the recomputed
    # activations when checkpointed, and the gradient workspace.
    current = (layer_input + A if ckpt else A) + W
    g_layer = pr.grad_bytes * shape.layer_params
    g_all = pr.grad_bytes * shape.n_params
    # Gradients of earlier micro-batches stay allocated under accumulation (the head's too).
    earlier = g_all if setup.grad_accum > 1 else 0.0
    head_grad = 0 if earlier and ac else pr.head_grad_bytes
    # Autocast's bf16 weight copies live from the forward to their layer's backward; with
    # checkpointing only the head's and the recomputed layer's.
    copy_layer = 2 * shape.layer_linear_params if ac else 0
    copy_head = 2 * shape.vocab * shape.hidden if ac else 0
    ids = 8 * T  # the embedding's saved token ids, until the very end
    loss = (
        L * stored * T
        + H * T
        + rope
        + LOGIT_BYTES_TRANSIENT * shape.vocab * T
        + copy_head
        + (0 if ckpt else L * copy_layer)
        + earlier
    )

    def layer(done: int) -> float:
        """During the backward of a layer, `done` layers above it already back-propagated."""
        waiting = L - done - 1  # layers below it, still holding what they stored
        copies = copy_layer * (1 if ckpt else waiting + 1)
        grads = max(done * g_layer, earlier)
        return waiting * stored * T + current * T + rope + ids + copies + head_grad + grads

    return Stages(
        loss=round(loss),
        first_layer=round(layer(0)),
        last_layer=round(layer(L - 1)),
        end=round(g_all + pr.end_extra),
    )


def dynamic_peak(shape: ModelShape, setup: Setup, precision: Precision | None = None) -> int:
    """The largest activations + gradients over the stages of backward, bytes per device."""
    return stages(shape, setup, precision).peak


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Estimate:
    """Memory per device, bytes."""

    shape: ModelShape
    setup: Setup
    parameters: int
    gradients: int
    optimizer: int
    buffers: int
    activations: int  # at their peak (the loss stage), gradients excluded
    logits: int  # of which the cross-entropy's 12 bytes per logit
    dynamic: int  # the largest activations + gradients over backward

    @property
    def total(self) -> int:
        """Peak bytes per device."""
        return self.parameters + self.optimizer + self.buffers + self.dynamic

    def fits(self, capacity_bytes: float) -> bool:
        """Whether the estimate fits in ``USABLE_FRACTION`` of a device of that size."""
        return self.total <= USABLE_FRACTION * capacity_bytes


def fsdp_buffer_bytes(shape: ModelShape) -> int:
    """FSDP's unsharded buffers: the root's bf16 parameters for the whole step, two layers' bf16
    parameters, one layer's gradients in bf16 and in fp32 (``reduce_dtype``)."""
    return 2 * shape.root_params + (2 * 2 + 2 + 4) * shape.layer_params


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    """Peak memory per device of one training step (see the module docstring)."""
    n, P = setup.devices, shape.n_params
    pr = Precision.of(shape, setup)
    buffers = fsdp_buffer_bytes(shape) if setup.fsdp else 0
    no_grads = replace(pr, grad_bytes=0.0, head_grad_bytes=0, end_extra=0)
    return Estimate(
        shape=shape,
        setup=setup,
        parameters=round(4 * P / n),
        gradients=round(4 * P / n),
        optimizer=round(8 * P / n),
        buffers=buffers,
        activations=stages(shape, replace(setup, grad_accum=1), no_grads).loss,
        logits=(LOGIT_BYTES_SAVED + LOGIT_BYTES_TRANSIENT) * shape.vocab * setup.tokens,
        dynamic=dynamic_peak(shape, setup, pr),
    )


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Device:
    """A GPU memory size as ``nvidia-smi`` reports it."""

    label: str
    bytes: int


DEVICES: tuple[Device, ...] = (
    Device("80 GB (A100/H100)", 81_559 * MIB),
    Device("141 GB (H200)", 143_771 * MIB),
)


def job_setup(devices: int, seq_len: int, micro_batch: int, checkpointing: bool) -> Setup:
    """How a job with ``devices`` runs: the Trainer on one device, FSDP on more."""
    return Setup(devices, seq_len, micro_batch, checkpointing, fsdp=devices > 1)


def fewest_devices(
    shape: ModelShape, device: Device, *, seq_len: int, micro_batch: int, checkpointing: bool,
    candidates: Sequence[int] = (1, 2, 4, 8),
) -> int | None:  # fmt: skip
    """The fewest devices (one: the Trainer; more: FSDP) on which a job's step fits, or None."""
    for n in candidates:
        if estimate(shape, job_setup(n, seq_len, micro_batch, checkpointing)).fits(device.bytes):
            return n
    return None


# --------------------------------------------------------------------------- Markdown


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def summary_table(shapes: Iterable[ModelShape]) -> list[str]:
    """Parameters and the per-device states, all models."""
    lines = [
        "| model | parameters | embeddings | states, 1 device | 2 | 4 | 8 | FSDP buffers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in shapes:
        states = [16 * s.n_params / n for n in (1, 2, 4, 8)]
        lines.append(
            f"| {s.name} | {s.n_params:,} ({_params(s.n_params)}) | "
            f"{'tied' if s.tied else 'untied'} | "
            + " | ".join(_gib(x) for x in states)
            + f" | {_gib(fsdp_buffer_bytes(s))} |"
        )
    return lines


def model_table(
    shape: ModelShape,
    *,
    seq_lens: Sequence[int] = (2048, 4096),
    micro_batches: Sequence[int] = (1, 4),
    devices: Sequence[int] = (1, 2, 4, 8),
) -> list[str]:
    """Total GiB per device for each (seq_len, micro-batch, checkpointing) and device count."""
    head = "| seq | micro-batch | ckpt | activations, 1 / ≥ 2 devices | of which logits | "
    head += " | ".join(f"devices: {n}" for n in devices) + " |"
    lines = [head, "|" + "---|" * (5 + len(devices))]
    for seq in seq_lens:
        for mb in micro_batches:
            for ckpt in (False, True):
                est = [estimate(shape, job_setup(n, seq, mb, ckpt)) for n in devices]
                fsdp = estimate(shape, Setup(2, seq, mb, ckpt))
                lines.append(
                    f"| {seq} | {mb} | {'yes' if ckpt else 'no'} | "
                    f"{_gib(est[0].activations)} / {_gib(fsdp.activations)} | "
                    f"{_gib(fsdp.logits)} | " + " | ".join(_gib(e.total) for e in est) + " |"
                )
    return lines


#: The setups of the fit table: (seq_len, micro_batch, checkpointing).
FIT_SETUPS: tuple[tuple[int, int, bool], ...] = (
    (2048, 1, True),
    (2048, 1, False),
    (2048, 4, False),
    (4096, 4, False),
)


def fit_table(shapes: Iterable[ModelShape]) -> list[str]:
    """Fewest devices per model, setup and device size (``80 GB / 141 GB`` in a cell)."""
    cols = [f"s {s}, mb {b}{', ckpt' if c else ''}" for s, b, c in FIT_SETUPS]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for shape in shapes:
        cells = []
        for s, b, c in FIT_SETUPS:
            ns = [
                fewest_devices(shape, d, seq_len=s, micro_batch=b, checkpointing=c) for d in DEVICES
            ]
            cells.append(" / ".join(str(n) if n is not None else "> 8" for n in ns))
        lines.append(f"| {shape.name} | " + " | ".join(cells) + " |")
    return lines


def markdown(shapes: Sequence[ModelShape] | None = None) -> str:
    """Every table of docs/scaling.md, as one Markdown block."""
    shapes = list(SHAPES.values()) if shapes is None else list(shapes)
    out: list[str] = [
        "GiB per device (1 GiB = 2^30 bytes). States: fp32 parameters, fp32 gradients and "
        "AdamW's two fp32 moments, 16 bytes a parameter, split N ways by FSDP.",
        "",
        *summary_table(shapes),
        "",
        f"Fewest devices (of 1, 2, 4, 8) whose estimate fits in {USABLE_FRACTION:.0%} of the "
        f"GPU's memory, as `{DEVICES[0].label} / {DEVICES[1].label}` in each cell (s: sequence "
        "length, mb: micro-batch per device, ckpt: activation checkpointing):",
        "",
        *fit_table(shapes),
    ]
    for shape in shapes:
        out += [
            "",
            f"#### {shape.name}",
            "",
            f"{shape.n_params:,} parameters: hidden {shape.hidden}, {shape.layers} layers, "
            f"{shape.heads} heads ({shape.kv_heads} KV), intermediate {shape.intermediate}, "
            f"vocab {shape.vocab:,}, {'tied' if shape.tied else 'untied'} embeddings "
            f"([config]({shape.source})). Peak GiB per device of a job with `devices: N`; "
            "activations of one micro-batch on one device (fp32 weights under autocast) and "
            "under FSDP (bf16).",
            "",
            *model_table(shape),
        ]
    return "\n".join(out) + "\n"


def update_docs(path: Path, text: str) -> bool:
    """Replace the generated block of ``path``; True when it changed."""
    doc = path.read_text()
    start, stop = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    new = doc[:start] + "\n" + text + doc[stop:]
    if new == doc:
        return False
    path.write_text(new)
    return True


def embedded(path: Path) -> str:
    """The generated block as it stands in ``path``."""
    doc = path.read_text()
    return doc[doc.index(BEGIN) + len(BEGIN) : doc.index(END)].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or rewrite them in docs/scaling.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", choices=sorted(SHAPES), help="default: all")
    p.add_argument("--update-docs", nargs="?", const=DOCS, type=Path, metavar="PATH")
    a = p.parse_args(argv)
    shapes = [SHAPES[m] for m in a.model] if a.model else None
    text = markdown(shapes)
    if a.update_docs is not None:
        changed = update_docs(a.update_docs, text)
        print(f"{a.update_docs}: {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
