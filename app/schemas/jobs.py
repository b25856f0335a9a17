"""Requests and responses of the job routes (docs/api.md, Jobs).

Every float is finite (`allow_inf_nan=False`) and bounded. :class:`JobRequest` is the one typed
shape of a job: the API validates a submission with it, the worker reads the stored request back
through it (so a request stored by an earlier version gets today's defaults), and the worker's
``JobSpec`` (``workers/ml/job.py``) carries it as it is to every process of the job. Every
default of a job lives here and nowhere else. Rules that depend on the model (the 2:4 reach,
paths inside their roots) are checked by the service at submission, still before anything is queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.recipes import LORA_TARGETS
from app.schemas.common import Page
from app.schemas.observations import ObservationPage

Method = Literal["depth", "width", "2:4", "unstructured"]
JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]

EXAMPLE_JOB: dict[str, Any] = {
    "model": "tiny-llama",
    "method": "depth",
    "rho": 0.25,
    "tokens": 300_000,
    "dataset": {"path": "corpus.txt"},
    "checkpoints": 12,
    "family": "tiny-llama",
    "refit": True,
    "stop_rule": {"kind": "marginal", "threshold": 0.5, "min_checkpoints": 4},
}


#: A dry run of a width job on a Llama-3.1-8B-shaped model (its config.json only) on 2 devices
#: of 80 GiB (EXAMPLE_DRY_RUN is the answer).
EXAMPLE_DRY_RUN_REQUEST: dict[str, Any] = {
    "model": "llama-8b",
    "method": "width",
    "rho": 0.25,
    "tokens": 1e9,
    "dataset": {"path": "corpus-tok"},
    "seq_len": 2048,
    "batch_size": 4,
    "devices": 2,
    "activation_checkpointing": True,
    "dry_run": True,
}


class DatasetIn(BaseModel):
    """Training text inside ``DATA_ROOT``: a text file, JSONL, a saved HF dataset, or a tokenised
    directory made by ``p2law tokenize`` (its manifest, tokenizer and held-out range are checked
    at submission by ``app.services.jobs.check_dataset``)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="Inside DATA_ROOT: .txt, JSONL, a saved HF dataset or a tokenised directory.",
    )
    text_field: str = Field("text", min_length=1, max_length=128, description="JSONL/HF field.")
    eval_path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Held-out text inside DATA_ROOT (not with a tokenised directory).",
    )
    eval_tokens: int | None = Field(
        None, ge=64, le=100_000_000, description="Size of the held-out evaluation set (tokens)."
    )


class StopRuleIn(BaseModel):
    """Law-guided early stop: stop when the predicted −dL/dD falls below ``threshold``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["marginal"] = Field("marginal", description="The rule (docs/law.md §7).")
    threshold: float = Field(
        ...,
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        description="Loss per billion tokens (nats / 1e9 tokens) below which training stops.",
    )
    min_checkpoints: int = Field(4, ge=3, le=64, description="Checkpoints before the rule acts.")


class FullRecipe(BaseModel):
    """Full post-training: every weight of the pruned model trains (the default)."""

    # `kind` is the union's tag: a recipe object names it (a request without `recipe` is full).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["kind"]})

    kind: Literal["full"] = "full"


class LoraRecipe(BaseModel):
    """Low-rank adapters on the pruned model's projections, its weights frozen; the artifact has
    them merged (a plain model of the pruned size, every pruned zero kept)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lora"]
    rank: int = Field(16, ge=1, le=4096, description="Rank r of each adapter (B·A).")
    alpha: float | None = Field(
        None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="Scale numerator: the update is (alpha / rank)·B·A; null: 2 × rank.",
    )
    dropout: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="Adapter dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS),
        min_length=1,
        max_length=64,
        description=(
            "Linear modules that get adapters, by name (checked against the model's "
            "config.json at submission); default: every attention and MLP projection."
        ),
        # What `_targets_named` checks, stated in the schema.
        json_schema_extra={
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[^\x00]*$"},
        },
    )

    @property
    def scale_alpha(self) -> float:
        """The adapters' alpha (2 × rank when not given)."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    @model_validator(mode="after")
    def _targets_named(self) -> LoraRecipe:
        bad = [m for m in self.target_modules if not m or len(m) > 128 or "\x00" in m]
        if bad or len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("target_modules must be distinct, non-empty module names")
        return self


class DistillRecipe(BaseModel):
    """Logit distillation from the job's own dense model before pruning (frozen): the loss is
    alpha · T² · KL(teacher ‖ student at T) + (1 − alpha) · LM loss."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["distill"]
    temperature: float = Field(
        1.0, gt=0, le=100, allow_inf_nan=False, description="Softmax temperature T of both."
    )
    alpha: float = Field(
        1.0, ge=0, le=1, allow_inf_nan=False, description="Weight of the KL term (0: LM only)."
    )


Recipe = Annotated[FullRecipe | LoraRecipe | DistillRecipe, Field(discriminator="kind")]


class JobRequest(BaseModel):
    """A prune → post-train job (docs/api.md). ``rho`` is the target; the measured ρ is reported."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [EXAMPLE_JOB, EXAMPLE_DRY_RUN_REQUEST]}
    )

    model: str = Field(
        ..., min_length=1, max_length=1024, description="HF model directory inside MODEL_ROOT."
    )
    method: Method
    rho: float = Field(
        ..., gt=0, lt=1, allow_inf_nan=False, description="Target pruning rate (fraction of N0)."
    )
    recipe: Recipe = Field(
        default_factory=FullRecipe,
        description=(
            "How the pruned model recovers (docs/jobs.md, Recipes): full post-training "
            "(default), LoRA adapters merged at the end, or distillation from the dense model."
        ),
    )
    tokens: float = Field(
        ..., gt=0, le=1e13, allow_inf_nan=False, description="Post-training tokens (raw count)."
    )
    dataset: DatasetIn
    checkpoints: int = Field(12, ge=2, le=64, description="Log-spaced evaluation points.")
    seq_len: int = Field(128, ge=8, le=32_768)
    batch_size: int = Field(8, ge=1, le=4096, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=1024)
    lr: float = Field(3e-4, gt=0, le=1.0, allow_inf_nan=False)
    schedule: Literal["constant", "cosine", "wsd"] = Field(
        "wsd",
        description=(
            "LR after the warm-up. wsd (default): warmup-stable-decay, the peak until the last "
            "decay_frac of the steps, then a linear fall to min_lr_ratio × lr, so every "
            "checkpoint before the decay stands for a run stopped there; cosine: a half-cosine "
            "to the floor over all the steps; constant: the peak to the end."
        ),
    )
    warmup_frac: float = Field(0.02, ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, le=10.0, allow_inf_nan=False)
    calib_samples: int = Field(32, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if present.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on cuda, float32 on cpu."
    )
    devices: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Data-parallel sharded training (FSDP2) over this many devices of the worker: GPUs, "
            "or CPU processes with device 'cpu'. batch_size is per device, so one optimizer "
            "step sees batch_size × grad_accum × devices sequences. A worker with fewer "
            "devices fails the job with the reason."
        ),
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, ~1/3 more compute.",
    )
    grad_clip: float | None = Field(
        1.0,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description=(
            "Clip the global gradient norm (over every device's shards) to this before each "
            "optimizer step; null: no clipping."
        ),
    )
    decay_frac: float = Field(
        0.2,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description=(
            "wsd: share of the steps, at the end, over which the LR decays (at most the steps "
            "after the warm-up)."
        ),
    )
    min_lr_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="wsd and cosine: the LR they end at, as a fraction of lr.",
    )
    compile: bool | None = Field(
        None,
        description="torch.compile each decoder block; null (default): on CUDA, off on CPU.",
    )
    family: str | None = Field(
        None, min_length=1, max_length=64, description="Family label of the observations."
    )
    refit: bool = Field(False, description="Refit the family/method's law when the job succeeds.")
    stop_rule: StopRuleIn | None = None
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="A repeated submission with the same key returns the same job.",
    )
    dry_run: bool = Field(
        False,
        description=(
            "Check the job and estimate its memory per device from the model's config.json, "
            "answer 200 with the plan and the estimate, and store and queue nothing."
        ),
    )
    device_memory_gib: float | None = Field(
        None,
        gt=0,
        le=1_048_576,
        allow_inf_nan=False,
        description=(
            "Memory of one device in GiB, against which the job's peak per device is checked "
            "(a job that does not fit is refused); null: the DEVICE_MEMORY_GIB setting."
        ),
    )

    @model_validator(mode="after")
    def _enough_tokens(self) -> JobRequest:
        if int(self.tokens) < self.checkpoints:
            raise ValueError("tokens must be at least the number of checkpoints")
        return self


#: A finished depth job on the demo model (measured with `make demo-model`, 300k tokens).
EXAMPLE_JOB_OUT: dict[str, Any] = {
    "id": "8e78408b3c5648d68f05c7628f758928",
    "status": "succeeded",
    "method": "depth",
    "family": "demo-llama",
    "progress": {"tokens_done": 300032, "tokens_total": 300032, "fraction": 1.0, "eta_s": None},
    "measured": {
        "n0": 65824,
        "n_after": 53472,
        "rho": 0.18765,
        "l0": 3.4907,
        "loss_after_prune": 3.8011,
        "protocol": "eval:2d54c8c059537bd3:seq128:n16384",
        "eval_noise": 0.0284,
    },
    "artifact": "var/artifacts/8e78408b3c5648d68f05c7628f758928",
    "error": None,
    "attempts": 1,
    "max_attempts": 3,
    "stopped_early": False,
    "stop_reason": None,
    "stopped_at_tokens": None,
    "resumed_from_tokens": None,
    "warnings": ["refit fe0df58c6566428aaa17cece3891d346 of demo-llama/depth is now the default"],
    "request": EXAMPLE_JOB,
    "created_at": "2026-11-28T17:51:19Z",
    "started_at": "2026-11-28T17:51:20Z",
    "finished_at": "2026-11-28T17:52:11Z",
}


class JobAccepted(BaseModel):
    """A queued job."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "8e78408b3c5648d68f05c7628f758928", "status": "queued"}]
        }
    )

    id: str
    status: JobStatus


#: The service's answer to EXAMPLE_DRY_RUN_REQUEST (a test keeps it so).
EXAMPLE_DRY_RUN: dict[str, Any] = {
    "n0": 8030261248,
    "plan": {
        "method": "width",
        "target_rho": 0.25,
        "rho": 0.25002435587012173,
        "n0": 8030261248,
        "n_after": 6022500352,
        "shape": {
            "layers": 32,
            "attention_heads": 32,
            "kv_heads": 8,
            "head_dim": 128,
            "intermediate_size": 9230,
            "max_rho": 0.8481861635194462,
            "kv_groups_removed": 0,
            "heads_per_group": 4,
            "channels_removed": 5106,
            "removed": {"attention": 0, "mlp": 2007760896},
        },
    },
    "memory": {
        "per_device_gib": 68.6652,
        "device_gib": 80.0,
        "fits": True,
        "min_devices": 2,
        "devices": 2,
        "phase": "training",
        "training_gib": 60.6652,
        "preparation_gib": 32.1065,
        "breakdown": {
            "weights": 11.2178,
            "optimizer": 22.4356,
            "gradients": 1.957,
            "masks": 0.0,
            "fsdp_buffers": 5.6505,
            "activations": 15.7193,
            "logits": 0.7339,
            "workspace": 2.9512,
            "adapters": 0.0,
            "teacher": 0.0,
            "margin": 8.0,
        },
    },
    "warnings": [],
}


class PlanOut(BaseModel):
    """What pruning would do (``app.core.pruning.plan_pruning``): ``rho`` is the ρ the worker
    will measure, ``n_after`` the parameters left (depth, width) or the weights left non-zero
    (2:4, unstructured), ``shape`` what the pruned model keeps (docs/api.md)."""

    method: str
    target_rho: float
    rho: float
    n0: int
    n_after: int
    shape: dict[str, Any]


class MemoryBreakdown(BaseModel):
    """What the peak per device is made of, GiB; the parts add up to ``per_device_gib`` (up to
    rounding)."""

    weights: float = Field(description="fp32 weights: the dense model in the preparation.")
    optimizer: float = Field(description="AdamW's two fp32 moments (their shards).")
    gradients: float = Field(description="Gradients alive at the peak.")
    masks: float = Field(description="Bool keep-masks (2:4, unstructured).")
    fsdp_buffers: float = Field(description="FSDP's gathered parameters and gradients (N > 1).")
    activations: float = Field(
        description="Saved activations, autocast's bf16 weight copies, a forward's intermediates."
    )
    logits: float = Field(description="The loss's float32 logits of one chunk of tokens.")
    workspace: float = Field(
        description="Temporaries: a layer's backward, the optimizer step, pruning's scores."
    )
    margin: float = Field(description="Kept free for CUDA, libraries and fragmentation.")
    adapters: float = Field(
        0.0,
        description="LoRA: the adapters' fp32 weights, gradients and two AdamW moments (shards).",
    )
    teacher: float = Field(
        0.0,
        description="Distillation: the frozen dense teacher's weights (shard), its gathered "
        "layer under FSDP and its forward (one layer's intermediates or a chunk's logits).",
    )


class MemoryOut(BaseModel):
    """A job's memory on its most loaded device (device 0), from the memory model
    (``app.core.memory``, docs/scaling.md)."""

    per_device_gib: float = Field(description="Device 0's peak plus the margin, GiB.")
    device_gib: float = Field(description="Memory of one device, GiB.")
    fits: bool = Field(description="per_device_gib <= device_gib.")
    min_devices: int | None = Field(
        description="The fewest of 1, 2, 4, …, 1024 devices it fits on; null: none."
    )
    devices: int = Field(description="The devices the request asks for.")
    phase: Literal["training", "preparation"] = Field(
        description="The phase that sets the peak: post-training, or the preparation (the "
        "dense model on device 0: L0 and pruning)."
    )
    training_gib: float = Field(description="Peak of post-training on each device, GiB.")
    preparation_gib: float = Field(description="Peak of the preparation on device 0, GiB.")
    breakdown: MemoryBreakdown


class JobDryRun(BaseModel):
    """A dry run's answer: the plan and the memory a submission would have (nothing stored).
    ``plan`` and ``memory`` are null when the model's config.json is not one the plan reads
    (``warnings`` says why)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_DRY_RUN]})

    n0: int | None
    plan: PlanOut | None
    memory: MemoryOut | None
    warnings: list[str]


class Progress(BaseModel):
    """Post-training progress in tokens; ``eta_s`` once the rate is known."""

    tokens_done: int
    tokens_total: int
    fraction: float
    eta_s: float | None


class MeasuredOut(BaseModel):
    """What the worker measured: dense size, pruned size, measured ρ, L0, loss after pruning."""

    model_config = ConfigDict(extra="allow")

    n0: float
    n_after: float
    rho: float
    l0: float
    loss_after_prune: float


class JobOut(BaseModel):
    """A job (docs/api.md's fields, plus the early-stop record and warnings)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_JOB_OUT]})

    id: str
    status: JobStatus
    method: str
    family: str
    progress: Progress
    measured: MeasuredOut | None
    artifact: str | None
    error: str | None
    attempts: int
    max_attempts: int
    stopped_early: bool
    stop_reason: str | None
    stopped_at_tokens: int | None
    resumed_from_tokens: int | None
    warnings: list[str]
    request: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(Page[JobOut]):
    """A page of jobs, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [EXAMPLE_JOB_OUT], "total": 1, "offset": 0, "limit": 50}]
        }
    )


class JobObservationPage(ObservationPage):
    """The observations a job recorded (run_id = the job id), by tokens."""
