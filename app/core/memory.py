"""Memory per device of a prune → post-train job, from a model's ``config.json`` alone.

Pure Python (no torch): the API estimates a job before it is queued (``app.services.admission``:
the dry run, and the 422 of a job that does not fit), and ``benchmarks/memory_model.py`` and
``benchmarks/job_memory_table.py`` print the tables of docs/scaling.md from the same functions.

**How a job uses its devices** (``workers/ml/pipeline.py``, ``workers/ml/strategy.py``). The
*preparation* runs in one process on device 0 with the **dense** model: load it in fp32, measure
L0 on the held-out set, calibrate and prune, measure the loss after pruning. Then every device
*trains* the **pruned** model, by one recipe on one device and on N: fp32 master weights under
``torch.autocast(bf16)`` (the residual stream stays fp32, and autocast's cache keeps the bf16
copy of every weight it casts until the forward ends, then each until its layer's backward); on
``N > 1`` devices FSDP2 (ZeRO-3 style, ``fully_shard`` per decoder layer then the model,
``MixedPrecisionPolicy(reduce_dtype=fp32)``) holds 1/N of the fp32 parameters, gradients, AdamW
states and keep-masks on each device and gathers the fp32 weights it computes with. Every device
runs its own micro-batch, so activations do not shrink with N. The loss is the job's chunked
cross-entropy (``workers/ml/evaluate.py``): a chunk of tokens' float32 logits at a time. A CPU
job, or one with ``dtype: float32``, computes in fp32. Device 0's peak is the larger of the two
phases (the dense model is freed before training). :class:`Setup` also describes the other ways
to run a step (FSDP gathering bf16 parameters, ``bf16_by="policy"``; Hugging Face's full-logit
loss, ``loss="full"``), which the formula checks use.

**Training**, bytes per device, P parameters, P_layer per decoder layer, P_root = embeddings +
head + final norm (what ``fully_shard(model)`` owns), T = micro_batch x seq_len tokens, M weights
under a keep-mask (2:4, unstructured):

    parameters   4 P / N                      fp32 master weights (N = 1 for the Trainer)
    optimizer    8 P / N                      AdamW exp_avg + exp_avg_sq, fp32
    masks        M / N                        bool keep-masks, laid out like their parameters
    gradients    4 P / N                      fp32, filled during backward, freed by zero_grad
    FSDP buffers 4 P_root + 12 P_layer        the root gathered for the whole step (FSDP2 does
                                              not reshard the root after forward), two layers
                                              gathered (current + prefetched), one layer's
                                              unsharded gradients, all fp32; gathering bf16:
                                              2 P_root + 10 P_layer (bf16, and the gradients'
                                              fp32 copy for the reduce-scatter)
    activations  see below, per micro-batch

Gradients and activations peak at different times (activations at the loss, before any gradient
of the step exists but the head's; gradients at the end of backward), so the total is the
parameters, the optimizer states, the masks and the buffers plus the largest of (activations +
gradients) over the stages of a step: the loss, each decoder layer's backward, the end (under
FSDP the end also holds the root's gradients unsharded: 4 P_root, 6 P_root gathering bf16), the
optimizer step (the CPU's unfused AdamW holds two temporaries the size of the largest parameter;
CUDA's fused AdamW none; masking the gradients before clipping, a float copy of the largest
mask) and a checkpoint's held-out loss. With gradient accumulation the gradients of earlier
micro-batches stay, so they are added to every stage.

**Activations.** Counted the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", MLSys 2023, arXiv:2205.05198, §4.1) count them — every tensor
autograd saves in a layer — but for a Llama decoder layer (RMSNorm, GQA, RoPE, SwiGLU, no
dropout) as Hugging Face's ``LlamaForCausalLM`` runs it, instead of their GPT layer
(``s·b·h·(34 + 5·a·s/h)`` bytes). Bytes saved per token and layer, with h = hidden, q = heads x
head_dim, k = kv_heads x head_dim, f = intermediate, a = heads:

    bf16 parameters (FSDP):  16 h + 4 q + 4 k + 8 f + 4 a + 8
    fp32 params + autocast:  26 h + 4 q + 4 k + 8 f + 4 a + 8
    fp32 throughout:         24 h + 8 q + 8 k + 16 f + 4 a + 8

(each RMSNorm saves its input upcast to fp32 and the normalised tensor; SDPA saves q, k and v
after RoPE at their GQA sizes, its output and the fp32 log-sum-exp; SwiGLU saves the gate and up
outputs, the SiLU output and their product; under autocast each projection also saves its own
bf16 cast of its input; Qwen3's per-head q/k norms add (4 + c)(q + k) + 4(a + kv_heads)).
``attention="eager"`` adds the fp32 softmax (and its bf16 cast, 6·a·s bytes in all, or 4·a·s in
fp32) and saves k and v repeated to all heads (Korthikanti's ``5·a·s`` term without dropout).
Flash/SDPA attention (the Hugging Face default) keeps no s x s matrix.

The head. The job's chunked loss does its work in the forward: besides every layer's saved
tensors it holds the final hidden states and a buffer for their gradient, a buffer for the head's
gradient (the head's gradient from then on), under autocast two bf16 copies of the head weight,
and one chunk of ``loss_chunk_tokens`` tokens at a time: its float32 logits and their
log-sum-exp's temporary (8 bytes a logit), then their gradient (float32 and its bf16 copy) and
its product with the chunk's hidden states (vocab x hidden). Hugging Face's full-logit loss
instead saves float32 log-probabilities of every token and, in its backward, their gradient and
the logits': **12 bytes per logit** (T x vocab), 23.5 GiB for 8 x 2048 tokens of a 128k
vocabulary.

Activation checkpointing (per decoder layer) saves only each layer's input (2 h bytes a token
in bf16, 4 h in fp32 or under autocast) and recomputes one layer at a time in backward. Each
layer's backward also holds a workspace of gradients of its largest intermediates, ``(6 f + 8 h)
x c / 2`` bytes a token for c-byte compute (a bound measured on CPU).

**Preparation**, on device 0, without gradients: the dense fp32 weights (4 P0) and the largest of
(a) a held-out forward of ``batch_size`` x ``seq_len`` tokens, before pruning and after it (with
the kept masks): inside a layer ``3 c f + 16 h`` bytes a token (the SwiGLU's intermediates and the
residual stream), at the head a chunk's float32 logits and log-softmax (8 bytes a logit), and under
autocast (its cache off) the bf16 copy of the weight at hand; (b) calibration's forward (fp32, the
layers only); (c) the pruning itself: a bool keep-mask for every projection the method scores and
the scoring of the largest one (Wanda's fp32 score and, for 2:4, the top-2 of each group of 4, 10
bytes a weight; for unstructured, the score and the sort order, 14 bytes a weight); width pruning
rebuilds one layer at a time, its old projections freed as the next layer starts (one layer's kept
weights, 4 bytes each).

**Recovery recipes** (``app.core.recipes``; :func:`training_peak`). LoRA: the pruned weights
stay (4 P / N) but have no gradients, no AdamW moments and no gradient masking; each adapter
parameter (r·(in + out) per target projection per layer) holds its fp32 weight, gradient and two
moments, 16 bytes, sharded 1/N; the activations are a full recipe's (each adapter saves the
input its projection saves). Distillation: the full recipe plus the frozen teacher, the dense
model: its fp32 weights sharded 1/N like the student's, under FSDP its gathered root and one
gathered layer, and its forward without gradients (one layer's intermediates, or at the head its
final hidden states and one chunk's float32 logits and log-softmax).

**Margin.** Not modelled: the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation,
FSDP's all-gather inputs (2 P_layer / N), RoPE's cos/sin beyond one copy per micro-batch, and
what ``torch.compile`` changes (compiled blocks are counted as eager ones). A job fits when its
estimate plus :data:`MARGIN_FRACTION` of the device is within the device.

Checked on CPU against the peaks the CPU allocator reaches while the job's own code runs on the
project's tiny models (``tests/core/test_memory.py``: the preparation and steps of the job's
Trainer, within 1%) and, formula by formula, against what autograd saves
(``tests/benchmarks/test_memory_model.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from app.core.pruning import ModelShape as PlanShape
from app.core.pruning import PrunePlan
from app.core.recipes import LORA_TARGETS, RecipeName

GIB = 1024**3
MIB = 1024**2

Attention = Literal["sdpa", "eager"]
Compute = Literal["bf16", "fp32"]
Loss = Literal["full", "chunked"]
BF16By = Literal["policy", "autocast"]
Phase = Literal["training", "preparation"]
Recipe = RecipeName

#: Bytes per logit at the loss's backward: fp32 log-probs (saved) + fp32 gradient of the
#: log-probs + fp32 gradient of the logits.
LOGIT_BYTES_SAVED = 4
LOGIT_BYTES_TRANSIENT = 8

#: Share of a device an estimate leaves free for the CUDA context, library workspaces and
#: allocator fragmentation.
MARGIN_FRACTION = 0.10
#: Fraction of a device's memory an estimate may use.
USABLE_FRACTION = 1.0 - MARGIN_FRACTION

#: Device counts the fewest-devices search tries: powers of two up to the request's bound.
DEVICE_COUNTS: tuple[int, ...] = tuple(2**k for k in range(11))


#: The seven projections of a decoder layer by name, in the order of
#: :attr:`ModelShape.projections` (Llama, Qwen2, Qwen3, Mistral name them alike); LoRA's
#: default targets are all of them.
PROJECTION_NAMES: tuple[str, ...] = LORA_TARGETS


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-architecture decoder (Qwen2: the same with q/k/v biases; Qwen3: with
    per-head q/k norms)."""

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
    o_bias: bool = False
    mlp_bias: bool = False
    #: Qwen3's RMSNorm of every query and key head (``head_dim`` gains each).
    qk_norm: bool = False

    def __post_init__(self) -> None:
        sizes = (self.hidden, self.layers, self.heads, self.kv_heads, self.intermediate)
        if min(*sizes, self.vocab) < 1 or (self.head_dim_ is not None and self.head_dim_ < 1):
            raise ValueError(f"{self.name or 'model'}: every size must be >= 1")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "") -> ModelShape:
        """The shape a Hugging Face ``config.json`` describes, read by the pruning plan's reader
        (``app.core.pruning.ModelShape``); its :class:`~app.core.pruning.UnsupportedConfigError`
        when the config is not a complete one of a Llama-shaped architecture."""
        return cls.of(PlanShape.from_config(config), name or str(config.get("_name_or_path", "")))

    @classmethod
    def of(cls, plan_shape: PlanShape, name: str = "") -> ModelShape:
        """The shape the pruning plan's reader made of a config."""
        s = plan_shape
        return cls(
            name=name or s.model_type,
            hidden=s.hidden_size,
            layers=s.layers,
            heads=s.heads,
            kv_heads=s.kv_heads,
            intermediate=s.intermediate_size,
            vocab=s.vocab_size,
            tied=s.tied,
            qkv_bias=s.qkv_bias,
            head_dim_=s.head_dim,
            model_type=s.model_type,
            o_bias=s.o_bias,
            mlp_bias=s.mlp_bias,
            qk_norm=s.qk_norm,
        )

    def pruned(self, plan: PrunePlan) -> ModelShape:
        """What ``plan`` leaves of this (dense) shape: fewer layers (depth), fewer KV groups and
        MLP channels (width), or the same shape (2:4 and unstructured zero weights in place)."""
        kept = plan.shape
        return replace(
            self,
            name=f"{self.name} ({plan.method}, rho {plan.rho:.4f})",
            layers=int(kept["layers"]),
            heads=int(kept["attention_heads"]),
            kv_heads=int(kept["kv_heads"]),
            head_dim_=int(kept["head_dim"]),
            intermediate=int(kept["intermediate_size"]),
        )

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
    def projections(self) -> tuple[tuple[int, int], ...]:
        """``(out, in)`` of one layer's seven projections: q, k, v, o, gate, up, down."""
        h, q, k, f = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return ((q, h), (k, h), (k, h), (h, q), (f, h), (f, h), (h, f))

    def lora_params(self, rank: int, targets: Iterable[str]) -> int:
        """Parameters of LoRA adapters of rank ``rank`` on the named projections of every
        layer: r·(in + out) each (A is r × in, B is out × r)."""
        if rank < 1:
            raise ValueError("rank must be >= 1")
        sizes = dict(zip(PROJECTION_NAMES, self.projections, strict=True))
        names = list(dict.fromkeys(targets))
        unknown = [name for name in names if name not in sizes]
        if unknown:
            raise ValueError(f"no projection named {', '.join(unknown)}")
        return self.layers * sum(rank * (sizes[n][0] + sizes[n][1]) for n in names)

    @property
    def layer_linear_params(self) -> int:
        """Weights of one layer's seven projections (what autocast copies to bf16)."""
        return sum(out * inp for out, inp in self.projections)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: projections, their biases, two RMSNorm gains."""
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        bias += self.hidden if self.o_bias else 0
        bias += 2 * self.intermediate + self.hidden if self.mlp_bias else 0
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return self.layer_linear_params + bias + norms

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

    @property
    def projection_weights(self) -> int:
        """Weights of every decoder projection (what unstructured pruning masks)."""
        return self.layers * self.layer_linear_params

    @property
    def largest_projection(self) -> int:
        """Weights of the largest single projection."""
        return max(out * inp for out, inp in self.projections)

    @property
    def largest_param(self) -> int:
        """Elements of the largest single parameter tensor (the embedding, mostly)."""
        return max(self.embedding_params, self.largest_projection)

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
            **({"attention_bias": True} if self.o_bias else {}),
            **({"mlp_bias": True} if self.mlp_bias else {}),
        }

    def masked_by(self, plan: PrunePlan) -> tuple[int, int]:
        """The weights under a keep-mask after ``plan`` and the largest single mask: the
        projections 2:4 sparsifies, every projection for unstructured, none otherwise."""
        if plan.method == "2:4":
            sizes = [
                (2 * int(c["zeroed_each"]), int(c["count"]))
                for c in plan.shape["projections_2of4"]
                if int(c["count"]) > 0
            ]
            return sum(w * n for w, n in sizes), max((w for w, _ in sizes), default=0)
        if plan.method == "unstructured":
            return self.projection_weights, self.largest_projection
        return 0, 0


@dataclass(frozen=True)
class Setup:
    """How a training step runs."""

    devices: int = 1
    seq_len: int = 2048
    micro_batch: int = 1
    checkpointing: bool = False
    #: True: FSDP over ``devices``; False: the single-device Trainer, ``devices`` must be 1.
    fsdp: bool = True
    grad_accum: int = 1
    attention: Attention = "sdpa"
    #: bf16: bf16 parameters in compute under FSDP, autocast on one device; fp32: no autocast,
    #: fp32 everywhere (a CPU job, or ``dtype: float32``).
    compute: Compute = "bf16"
    #: How FSDP computes in bf16: ``policy``, ``MixedPrecisionPolicy(param_dtype=bf16)`` (bf16
    #: gathered, no autocast); ``autocast``, fp32 weights gathered as they are and autocast
    #: computing over them, as on one device (the job's recipe, ``workers/ml/strategy.py``).
    bf16_by: BF16By = "policy"
    #: AdamW's fused kernel (CUDA) updates in place; the CPU's loop holds two temporaries.
    fused_optimizer: bool = True
    #: full: the float32 logits of the whole micro-batch (Hugging Face's ``labels=`` loss);
    #: chunked: the job's loss, a chunk of tokens at a time (``workers.ml.evaluate``).
    loss: Loss = "full"

    def __post_init__(self) -> None:
        if self.devices < 1 or self.seq_len < 1 or self.micro_batch < 1 or self.grad_accum < 1:
            raise ValueError("devices, seq_len, micro_batch and grad_accum must be >= 1")
        if not self.fsdp and self.devices != 1:
            raise ValueError("the Trainer without FSDP runs on one device")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be sdpa or eager, not {self.attention!r}")
        if self.compute not in ("bf16", "fp32"):
            raise ValueError(f"compute must be bf16 or fp32, not {self.compute!r}")
        if self.loss not in ("full", "chunked"):
            raise ValueError(f"loss must be full or chunked, not {self.loss!r}")
        if self.bf16_by not in ("policy", "autocast"):
            raise ValueError(f"bf16_by must be policy or autocast, not {self.bf16_by!r}")

    @property
    def fsdp_gathers_bf16(self) -> bool:
        """Whether FSDP gathers bf16 copies of the parameters (else the fp32 weights)."""
        return self.fsdp and self.compute == "bf16" and self.bf16_by == "policy"

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch."""
        return self.micro_batch * self.seq_len


def job_setup(
    devices: int, seq_len: int, micro_batch: int, checkpointing: bool, **kwargs: Any
) -> Setup:
    """How a job with ``devices`` runs on CUDA: the Trainer on one device, FSDP on more, bf16
    by autocast over fp32 weights either way, the chunked loss; ``kwargs`` override."""
    recipe: dict[str, Any] = {"bf16_by": "autocast", "loss": "chunked", **kwargs}
    return Setup(devices, seq_len, micro_batch, checkpointing, fsdp=devices > 1, **recipe)


# --------------------------------------------------------------------------- activations


def layer_activation_bytes(
    shape: ModelShape,
    *,
    autocast: bool,
    seq_len: int,
    attention: Attention = "sdpa",
    compute_bytes: int = 2,
) -> int:
    """Bytes one decoder layer saves for backward, per token (no checkpointing).

    ``compute_bytes``: 2 for bf16 compute (FSDP's bf16 parameters, or autocast), 4 for fp32.
    """
    h, q, k, f, a = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate, shape.heads
    c = 2 if autocast else compute_bytes
    # Two RMSNorms: the fp32 input and the normalised tensor (fp32 under autocast or in fp32,
    # else bf16), plus a 4-byte rstd each; the projections' inputs (one bf16 cast per
    # projection under autocast, the shared tensor otherwise).
    norms = 2 * ((4 + (4 if autocast else c)) * h + 4)
    proj_inputs = (3 + 2) * 2 * h if autocast else (1 + 1) * c * h
    attn = c * (2 * q + 2 * k) + 4 * a  # q, k, v after RoPE, output, log-sum-exp
    if attention == "eager":
        # k and v repeated to every head; the fp32 softmax (and its bf16 cast); no log-sum-exp.
        attn += 2 * c * (q - k) - 4 * a + (4 + (c if c != 4 else 0)) * a * seq_len
    mlp = 4 * c * f  # gate and up outputs, SiLU output, their product (down's input)
    if shape.qk_norm:
        # Qwen3's per-head RMSNorms of q and k: the fp32 input, the normalised tensor, rstd.
        attn += (4 + c) * (q + k) + 4 * (a + shape.kv_heads)
    return norms + proj_inputs + attn + mlp


def head_activation_bytes(shape: ModelShape, *, autocast: bool, compute_bytes: int = 2) -> int:
    """Bytes saved per token outside the layers: final norm, head input, ids and labels, and
    the fp32 log-probabilities of the loss."""
    c = 2 if autocast else compute_bytes
    final_norm = (4 + (4 if autocast else c)) * shape.hidden + 4
    return final_norm + c * shape.hidden + 8 + 8 + LOGIT_BYTES_SAVED * shape.vocab


def layer_workspace_bytes(shape: ModelShape, *, compute_bytes: int = 2) -> int:
    """Gradient temporaries of one layer's backward, per token (a bound, measured on CPU)."""
    return (6 * shape.intermediate + 8 * shape.hidden) * compute_bytes // 2


def rope_bytes(shape: ModelShape, *, autocast: bool, seq_len: int, compute_bytes: int = 2) -> int:
    """RoPE's cos and sin, one copy per micro-batch (shared by the layers)."""
    return 2 * seq_len * shape.head_dim * (4 if autocast else compute_bytes)


def checkpoint_input_bytes(shape: ModelShape, *, autocast: bool, compute_bytes: int = 2) -> int:
    """What a checkpointed layer keeps per token: its input (the residual stream)."""
    return (4 if autocast else compute_bytes) * shape.hidden


@dataclass(frozen=True)
class Precision:
    """What the dtypes of a run decide about its memory."""

    #: fp32 parameters under autocast (the Trainer), else parameters in the compute dtype.
    autocast: bool
    #: Bytes of gradient per parameter held on this device (4 / N: fp32, sharded).
    grad_bytes: float
    #: The head weight's gradient from the head's backward to the end of backward.
    head_grad_bytes: int
    #: A transient at the end of backward (FSDP: the root's unsharded gradients).
    end_extra: int
    #: Bytes of a compute-dtype element: 2 (bf16) or 4 (fp32).
    compute_bytes: int = 2

    @classmethod
    def of(cls, shape: ModelShape, setup: Setup) -> Precision:
        """The Trainer's (fp32 gradients, fp32 head gradient, autocast in bf16) or FSDP's (fp32
        gradient shards, the head's gradient unsharded until the root's reduce-scatter: bf16
        plus its fp32 copy when FSDP gathers bf16 parameters, fp32 alone otherwise)."""
        head = shape.vocab * shape.hidden
        if setup.fsdp:
            grad = 4 / setup.devices
            if setup.compute == "fp32":
                return cls(False, grad, 4 * head, 4 * shape.root_params, 4)
            if setup.bf16_by == "autocast":
                return cls(True, grad, 4 * head, 4 * shape.root_params)
            return cls(False, grad, 2 * head, 6 * shape.root_params)
        if setup.compute == "fp32":
            return cls(False, 4.0, 4 * head, 0, 4)
        return cls(True, 4.0, 4 * head, 0)

    @classmethod
    def bf16_model(cls, shape: ModelShape) -> Precision:
        """A model cast to bf16 and trained without FSDP: bf16 gradients (the CPU checks)."""
        return cls(False, 2.0, 2 * shape.vocab * shape.hidden, 0)


# --------------------------------------------------------------------------- a step's stages


@dataclass(frozen=True)
class Held:
    """What one moment of a step or of the preparation holds beyond the resident states, bytes
    per device."""

    activations: int = 0  # saved (or recomputed) tensors, autocast's weight copies, RoPE, ids
    logits: int = 0  # the loss's bytes per logit
    gradients: int = 0  # parameter gradients, earlier micro-batches' included
    workspace: int = 0  # temporaries: a layer's backward, the optimizer step, pruning's scores
    masks: int = 0  # keep-masks alive at this moment (the preparation's)

    @property
    def total(self) -> int:
        """Bytes held."""
        return self.activations + self.logits + self.gradients + self.workspace + self.masks


@dataclass(frozen=True)
class Stages:
    """Activations and gradients alive at each stage of backward, bytes per device."""

    at_loss: Held  # the cross-entropy's backward, before any parameter gradient exists
    at_first_layer: Held  # the backward of the last decoder layer
    at_last_layer: Held  # the backward of the first decoder layer
    at_end: Held  # every gradient, no activation left
    at_step: Held  # the optimizer step
    at_eval: Held = Held()  # the held-out loss at a checkpoint (no gradient)

    @property
    def loss(self) -> int:
        return self.at_loss.total

    @property
    def first_layer(self) -> int:
        return self.at_first_layer.total

    @property
    def last_layer(self) -> int:
        return self.at_last_layer.total

    @property
    def end(self) -> int:
        return self.at_end.total

    @property
    def step(self) -> int:
        return self.at_step.total

    @property
    def largest(self) -> Held:
        """The stage that holds the most (the first of equals, in step order)."""
        order = (
            self.at_loss,
            self.at_first_layer,
            self.at_last_layer,
            self.at_end,
            self.at_step,
            self.at_eval,
        )
        return max(order, key=lambda held: held.total)

    @property
    def peak(self) -> int:
        """The largest stage."""
        return self.largest.total


def optimizer_step_bytes(shape: ModelShape, setup: Setup) -> int:
    """Temporaries of one AdamW step: none for the fused kernel; the CPU's loop holds two of the
    largest parameter (its ``sqrt`` and the division of it), a shard of it under FSDP."""
    if setup.fused_optimizer:
        return 0
    return round(2 * 4 * shape.largest_param / (setup.devices if setup.fsdp else 1))


#: The worker's chunk of the loss (``workers.ml.evaluate.loss_chunk_tokens``): float32 logits of
#: at most about this many bytes, within 1k–4k tokens a chunk.
CHUNK_LOGIT_BYTES = 1 << 28


def loss_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the job's loss (the worker's rule, held equal by a test)."""
    return max(1024, min(4096, CHUNK_LOGIT_BYTES // (4 * max(1, vocab))))


def chunked_loss_stage(
    shape: ModelShape, setup: Setup, pr: Precision, *, layers_held: float, earlier: float
) -> Held:
    """The moment of the chunked loss's forward that holds the most: every layer's stored
    activations, the final hidden states and their gradient buffer, the head's gradient buffer
    (allocated at the loss, the head's gradient later), under autocast the head weight's bf16
    copy, and one chunk at the larger of two moments: its float32 logits and the temporary of
    their log-sum-exp (8 bytes a logit), or the logits' gradient (float32, and its bf16 copy in
    bf16: 6 bytes a logit, 4 in fp32) with its products by the weight and by the hidden states
    (the latter vocab x hidden, in the compute dtype)."""
    T, h, V, ac, c = setup.tokens, shape.hidden, shape.vocab, pr.autocast, pr.compute_bytes
    dtype = 2 if ac else c  # the head's matmuls
    hidden = 4 if ac else c  # the final norm's output: fp32 under autocast
    final_norm = (4 + (4 if ac else c)) * h + 4
    chunk = min(T, loss_chunk_tokens(V))
    cast = dtype * chunk * h if dtype != hidden else 0  # the chunk's hidden states, cast
    lse = Held(logits=8 * chunk * V, workspace=cast)
    # The head's gradient buffer is fp32 under autocast: the bf16 product is cast to add to it.
    product = dtype * (V + chunk) * h + (4 * V * h if ac else 0)
    grad = Held(logits=(6 if dtype == 2 else 4) * chunk * V, workspace=cast + product)
    held = max((lse, grad), key=lambda x: x.total)
    # Under autocast two bf16 copies of the head weight: autocast's cached cast (the model's own
    # head, called for no position) and the loss's.
    copies = 2 * 2 * V * h if ac else 0
    return replace(
        held,
        activations=round(layers_held + (final_norm + 2 * hidden * h + 8) * T + copies),
        gradients=round(earlier + pr.head_grad_bytes),
    )


def stages(
    shape: ModelShape,
    setup: Setup,
    precision: Precision | None = None,
    *,
    mask_workspace: int = 0,
) -> Stages:
    """Activations + gradients at each stage of one micro-batch's backward.

    ``precision`` defaults to the setup's (:meth:`Precision.of`); ``mask_workspace`` is what
    masking the gradients before clipping holds at the end of backward (a float copy of the
    largest keep-mask).
    """
    pr = Precision.of(shape, setup) if precision is None else precision
    T, L, ac, ckpt = setup.tokens, shape.layers, pr.autocast, setup.checkpointing
    c = pr.compute_bytes
    A = layer_activation_bytes(
        shape, autocast=ac, seq_len=setup.seq_len, attention=setup.attention, compute_bytes=c
    )
    W = layer_workspace_bytes(shape, compute_bytes=2 if ac else c)
    H = head_activation_bytes(shape, autocast=ac, compute_bytes=c)
    rope = rope_bytes(shape, autocast=ac, seq_len=setup.seq_len, compute_bytes=c)
    layer_input = checkpoint_input_bytes(shape, autocast=ac, compute_bytes=c)
    stored = layer_input if ckpt else A  # what each layer keeps until its backward
    # What the layer being back-propagated holds: its stored tensors and the recomputed
    # activations when checkpointed (and the gradient workspace, apart).
    current = layer_input + A if ckpt else A
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
    layers_held = L * stored * T + rope + (0 if ckpt else L * copy_layer)
    if setup.loss == "chunked":
        # The chunked loss peaks inside the forward, where autocast's cache still holds every
        # layer's weight copies, checkpointed or not.
        held = L * stored * T + rope + L * copy_layer
        at_loss = chunked_loss_stage(shape, setup, pr, layers_held=held, earlier=earlier)
    else:
        at_loss = Held(
            activations=round(layers_held + (H - LOGIT_BYTES_SAVED * shape.vocab) * T + copy_head),
            logits=(LOGIT_BYTES_SAVED + LOGIT_BYTES_TRANSIENT) * shape.vocab * T,
            gradients=round(earlier),
        )

    def layer(done: int) -> Held:
        """During the backward of a layer, `done` layers above it already back-propagated."""
        waiting = L - done - 1  # layers below it, still holding what they stored
        copies = copy_layer * (1 if ckpt else waiting + 1)
        grads = max(done * g_layer, earlier)
        return Held(
            activations=round(waiting * stored * T + current * T + rope + ids + copies),
            gradients=round(head_grad + grads),
            workspace=W * T,
        )

    return Stages(
        at_loss=at_loss,
        at_first_layer=layer(0),
        at_last_layer=layer(L - 1),
        at_end=Held(gradients=round(g_all + pr.end_extra), workspace=mask_workspace),
        at_step=Held(gradients=round(g_all), workspace=optimizer_step_bytes(shape, setup)),
        at_eval=forward_bytes(
            shape, tokens=T, autocast=ac, compute_bytes=2 if ac else c, loss=setup.loss
        ),
    )


def dynamic_peak(shape: ModelShape, setup: Setup, precision: Precision | None = None) -> int:
    """The largest activations + gradients over the stages of backward, bytes per device."""
    return stages(shape, setup, precision).peak


def fsdp_buffer_bytes(shape: ModelShape, compute_bytes: int = 2) -> int:
    """FSDP's unsharded buffers: the root's parameters for the whole step, two layers'
    parameters, one layer's gradients (in bf16 and in fp32 for ``reduce_dtype`` with bf16
    parameters; once in fp32)."""
    c = compute_bytes
    return c * shape.root_params + (2 * c + c + (4 if c != 4 else 0)) * shape.layer_params


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Estimate:
    """Memory per device of one training step, bytes."""

    shape: ModelShape
    setup: Setup
    parameters: int
    gradients: int
    optimizer: int
    buffers: int
    activations: int  # at their peak (the loss stage), gradients excluded
    logits: int  # of which the loss's logits (12 bytes each, or one chunk's)
    dynamic: int  # the largest activations + gradients over backward
    masks: int = 0

    @property
    def total(self) -> int:
        """Peak bytes per device."""
        return self.parameters + self.optimizer + self.masks + self.buffers + self.dynamic

    def fits(self, capacity_bytes: float) -> bool:
        """Whether the estimate fits in ``USABLE_FRACTION`` of a device of that size."""
        return self.total <= USABLE_FRACTION * capacity_bytes


def _buffers(shape: ModelShape, setup: Setup) -> int:
    return fsdp_buffer_bytes(shape, 2 if setup.fsdp_gathers_bf16 else 4) if setup.fsdp else 0


def estimate(shape: ModelShape, setup: Setup, *, masked: int = 0) -> Estimate:
    """Peak memory per device of one training step (see the module docstring); ``masked``
    weights carry a bool keep-mask."""
    n, P = setup.devices, shape.n_params
    pr = Precision.of(shape, setup)
    no_grads = replace(pr, grad_bytes=0.0, head_grad_bytes=0, end_extra=0)
    at_loss = stages(shape, replace(setup, grad_accum=1), no_grads).at_loss
    return Estimate(
        shape=shape,
        setup=setup,
        parameters=round(4 * P / n),
        gradients=round(4 * P / n),
        optimizer=round(8 * P / n),
        buffers=_buffers(shape, setup),
        activations=at_loss.total,
        logits=at_loss.logits,
        dynamic=dynamic_peak(shape, setup, pr),
        masks=round(masked / n),
    )


# --------------------------------------------------------------------------- a job's peak


@dataclass(frozen=True)
class Peak:
    """The peak of one phase of a job on one device, by what holds it (bytes)."""

    phase: Phase
    weights: int = 0
    optimizer: int = 0
    gradients: int = 0
    masks: int = 0
    fsdp_buffers: int = 0
    activations: int = 0
    logits: int = 0
    workspace: int = 0
    #: LoRA: the adapters' fp32 weights, gradients and two AdamW moments (16 bytes each).
    adapters: int = 0
    #: Distillation: the frozen teacher's weights, its FSDP-gathered layer and its forward.
    teacher: int = 0

    @property
    def total(self) -> int:
        """Bytes at the peak."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "phase")

    def parts(self) -> dict[str, int]:
        """Every part by name, in a fixed order (bytes)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "phase"}


def teacher_bytes(teacher: ModelShape, setup: Setup) -> int:
    """What distillation's frozen teacher (the dense model) holds on each device: its fp32
    weights, sharded 1/N like the student's; under FSDP its gathered root and one gathered
    layer; and its forward without gradients (no saved activations: one layer's intermediates,
    or at the head its final hidden states and a chunk's float32 logits and log-softmax)."""
    c = 2 if setup.fsdp_gathers_bf16 else 4
    gathered = c * (teacher.root_params + teacher.layer_params) if setup.fsdp else 0
    autocast = setup.compute == "bf16"
    forward = forward_bytes(
        teacher,
        tokens=setup.tokens,
        autocast=autocast,
        compute_bytes=2 if autocast else 4,
        loss="chunked",
    )
    return round(4 * teacher.n_params / setup.devices) + gathered + forward.total


def training_peak(
    shape: ModelShape,
    setup: Setup,
    *,
    masked: int = 0,
    largest_masked: int = 0,
    recipe: Recipe = "full",
    adapter_params: int = 0,
    teacher: ModelShape | None = None,
) -> Peak:
    """The peak of post-training on each device: the resident states plus the largest stage.

    ``masked`` weights carry a bool keep-mask, the largest mask ``largest_masked`` of them: the
    gradients are masked before clipping, one float copy of a mask at a time.

    By recovery recipe: ``full`` as above; ``lora``: the pruned weights are frozen (no
    gradients, no AdamW moments, nothing to mask) and ``adapter_params`` adapter weights hold
    16 bytes each (fp32 weight, gradient and two moments), sharded 1/N; the activations are
    counted as a full recipe's (each adapter saves the input its projection saves); ``distill``:
    the full recipe plus :func:`teacher_bytes` of ``teacher``.
    """
    n, P = setup.devices, shape.n_params
    frozen = recipe == "lora"
    pr = Precision.of(shape, setup)
    if frozen:
        pr = replace(pr, grad_bytes=0.0, head_grad_bytes=0, end_extra=0)
    mask_workspace = (
        round(4 * largest_masked / (n if setup.fsdp else 1)) if masked and not frozen else 0
    )
    held = stages(shape, setup, pr, mask_workspace=mask_workspace).largest
    if recipe == "distill" and teacher is None:
        raise ValueError("distillation needs the teacher's shape")
    return Peak(
        phase="training",
        weights=round(4 * P / n),
        optimizer=0 if frozen else round(8 * P / n),
        gradients=held.gradients,
        masks=round(masked / n),
        fsdp_buffers=_buffers(shape, setup),
        activations=held.activations,
        logits=held.logits,
        workspace=held.workspace,
        adapters=round(16 * adapter_params / n) if frozen else 0,
        teacher=teacher_bytes(teacher, setup) if recipe == "distill" and teacher else 0,
    )


def forward_bytes(
    shape: ModelShape,
    *,
    tokens: int,
    autocast: bool,
    compute_bytes: int,
    loss: Loss = "chunked",
    head: bool = True,
) -> Held:
    """The largest moment of a forward without gradients (the held-out loss; calibration runs
    the layers only, ``head=False``): inside a layer, or at the head with the loss's float32
    logits (see the module docstring). Under autocast, without its cache (the evaluation turns
    it off), one weight's bf16 copy at a time: the largest projection's."""
    c = 2 if autocast else compute_bytes
    h, V = shape.hidden, shape.vocab
    copies = 2 * shape.largest_projection if autocast else 0
    layer = Held(activations=(3 * c * shape.intermediate + 16 * h) * tokens + copies)
    if not head:
        return layer
    if loss == "chunked":
        # A chunk's float32 logits and their log-softmax (6 bytes a logit before that under
        # autocast: the bf16 logits and their float32 copy).
        chunk = min(tokens, loss_chunk_tokens(V))
        at_head = Held(
            activations=(4 if autocast else c) * h * tokens
            + copies
            + (2 * V * h if autocast else 0),
            logits=8 * chunk * V,
        )
    else:
        # The logits, their float32 copy and the float32 log-softmax of the whole batch.
        at_head = Held(
            activations=(4 + c) * h * tokens + copies + (2 * V * h if autocast else 0),
            logits=(c + 4 + 4 if c != 4 else 12) * V * tokens,
        )
    return max((layer, at_head), key=lambda held: held.total)


#: Bytes a weight holds while a mask method scores its projection: Wanda's fp32 score plus, for
#: 2:4, the top-2 values and indices of each group of 4 and the bool mask; for unstructured,
#: the sort order (int64), the ranks' comparison and the mask.
SCORING_BYTES = {"2:4": 4 + 2 + 4, "unstructured": 4 + 8 + 1 + 1}


def eligible_2of4_weights(shape: ModelShape) -> int:
    """Projection weights whose input width takes the 2:4 pattern (what 2:4 scores)."""
    return shape.layers * sum(out * inp for out, inp in shape.projections if inp % 4 == 0)


def preparation_peak(
    dense: ModelShape,
    *,
    method: str,
    tokens: int,
    pruned: ModelShape | None = None,
    kept_masks: int = 0,
    autocast: bool = True,
    compute_bytes: int = 2,
    calibration_tokens: int | None = None,
) -> Peak:
    """The peak of the preparation on device 0, where the dense model is pruned into
    ``pruned`` (default: the same shape, a mask method): the dense fp32 weights and the largest
    of the held-out forward before and after pruning (after it, with the ``kept_masks``), the
    calibration forward (in fp32, the layers only) and the pruning step.

    ``tokens``: a held-out forward's batch, ``batch_size`` x ``seq_len``; calibration's is at
    most as large (``calibration_tokens``).
    """
    after = dense if pruned is None else pruned
    kwargs: dict[str, Any] = {"autocast": autocast, "compute_bytes": compute_bytes}
    before = forward_bytes(dense, tokens=tokens, **kwargs)
    evaluate = replace(forward_bytes(after, tokens=tokens, **kwargs), masks=kept_masks)
    calibrate = forward_bytes(
        dense,
        tokens=tokens if calibration_tokens is None else calibration_tokens,
        autocast=False,
        compute_bytes=4,
        head=False,
    )
    if method == "2:4":
        pruning = Held(
            masks=eligible_2of4_weights(dense),
            workspace=SCORING_BYTES[method] * dense.largest_projection,
        )
    elif method == "unstructured":
        pruning = Held(
            masks=dense.projection_weights,
            workspace=SCORING_BYTES[method] * dense.largest_projection,
        )
    elif method == "width":
        # One layer's new projections (each its cut, no second copy) beside its old ones.
        pruning = Held(workspace=4 * after.layer_params)
    else:
        pruning = Held()
    held = max((before, calibrate, pruning, evaluate), key=lambda h: h.total)
    return Peak(
        phase="preparation",
        weights=4 * dense.n_params,
        masks=held.masks,
        activations=held.activations,
        logits=held.logits,
        workspace=held.workspace,
    )


@dataclass(frozen=True)
class JobRun:
    """What of a job decides its memory: the dense and the pruned shapes, the weights under a
    keep-mask, and how it trains (the request's ``seq_len``, ``batch_size``, ``grad_accum``,
    ``activation_checkpointing``, ``device`` and ``dtype`` as a worker resolves them)."""

    dense: ModelShape
    pruned: ModelShape
    method: str
    seq_len: int
    batch_size: int
    grad_accum: int = 1
    checkpointing: bool = False
    #: Weights under a keep-mask while training (2:4: the sparsified projections; unstructured:
    #: every projection).
    masked: int = 0
    #: The largest single keep-mask (a projection's weights).
    largest_masked: int = 0
    device: Literal["cuda", "cpu"] = "cuda"
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    attention: Attention = "sdpa"
    #: The recovery recipe (app.core.recipes); LoRA's rank and target projections.
    recipe: Recipe = "full"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = PROJECTION_NAMES

    @property
    def adapter_params(self) -> int:
        """LoRA's adapter parameters on the pruned model (0 for another recipe)."""
        if self.recipe != "lora":
            return 0
        return self.pruned.lora_params(self.lora_rank, self.lora_targets)

    @classmethod
    def planned(cls, dense: ModelShape, plan: PrunePlan, **training: Any) -> JobRun:
        """The job that prunes ``dense`` by ``plan`` and trains as ``training`` says (the fields
        from ``seq_len`` on): the pruned shape and the masked weights follow from the plan."""
        masked, largest = dense.masked_by(plan)
        return cls(
            dense=dense,
            pruned=dense.pruned(plan),
            method=plan.method,
            masked=masked,
            largest_masked=largest,
            **training,
        )

    def setup(self, devices: int) -> Setup:
        """The training step on ``devices`` devices: the Trainer on one, FSDP on more."""
        return job_setup(
            devices,
            self.seq_len,
            self.batch_size,
            self.checkpointing,
            grad_accum=self.grad_accum,
            attention=self.attention,
            compute="bf16" if self.dtype == "bfloat16" else "fp32",
            fused_optimizer=self.device == "cuda",
        )


@dataclass(frozen=True)
class JobMemory:
    """A job's memory on its most loaded device (device 0) against a device's size."""

    devices: int
    device_bytes: float
    training: Peak
    preparation: Peak

    @property
    def peak(self) -> Peak:
        """The phase that needs more (training on a tie)."""
        return self.preparation if self.preparation.total > self.training.total else self.training

    @property
    def margin(self) -> int:
        """What the estimate leaves free on the device (:data:`MARGIN_FRACTION`)."""
        return round(MARGIN_FRACTION * self.device_bytes)

    @property
    def per_device(self) -> int:
        """Bytes device 0 needs: the peak of either phase plus the margin."""
        return self.peak.total + self.margin

    @property
    def fits(self) -> bool:
        """Whether the device holds it."""
        return self.per_device <= self.device_bytes

    def breakdown(self) -> dict[str, int]:
        """What the per-device figure is made of (bytes; they add up to it)."""
        return {**self.peak.parts(), "margin": self.margin}


def job_memory(run: JobRun, devices: int, device_bytes: float) -> JobMemory:
    """Device 0's memory for ``run`` on ``devices`` devices of ``device_bytes`` each."""
    setup = run.setup(devices)
    autocast = run.dtype == "bfloat16"
    return JobMemory(
        devices=devices,
        device_bytes=device_bytes,
        training=training_peak(
            run.pruned,
            setup,
            masked=run.masked,
            largest_masked=run.largest_masked,
            recipe=run.recipe,
            adapter_params=run.adapter_params,
            teacher=run.dense,
        ),
        preparation=preparation_peak(
            run.dense,
            method=run.method,
            tokens=run.batch_size * run.seq_len,
            pruned=run.pruned,
            kept_masks=run.masked,
            autocast=autocast,
            compute_bytes=2 if autocast else 4,
        ),
    )


def min_devices(
    run: JobRun, device_bytes: float, counts: Iterable[int] = DEVICE_COUNTS
) -> int | None:
    """The fewest of ``counts`` devices on which ``run`` fits, or None when none does."""
    for n in sorted(counts):
        if job_memory(run, n, device_bytes).fits:
            return n
    return None
