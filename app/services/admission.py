"""Whether a job fits its devices, decided before anything is queued: the admission check of a
submission and the answer of a dry run (docs/api.md, ``POST /jobs/prune-finetune``).

From the model's ``config.json`` alone (no weights, no torch): the pruning plan
(``app.core.pruning.plan_pruning``) gives N0 and what the pruned model keeps, and the memory
model (``app.core.memory``) the peak of the job on its most loaded device, device 0: the larger of
the preparation (the dense model, pruned there) and the post-training (the pruned model, on each
of the job's devices), plus a margin. A submission that does not fit a device of
``device_memory_gib`` (default ``DEVICE_MEMORY_GIB``) is a 422 that names what it needs per
device, the device's memory and the fewest devices it fits on, or that no count does; a dry run
answers the same as JSON and stores nothing. A config the plan cannot read (a hub id, another
architecture) has no estimate: the job is admitted and the dry run says why there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.core import memory
from app.core.config import get_settings
from app.core.errors import Unprocessable
from app.core.pruning import PlanError, PrunePlan, UnsupportedConfigError, plan_pruning
from app.schemas.jobs import JobRequest, LoraRecipe

#: Decimals of the GiB figures a dry run answers with (0.0001 GiB is about 100 KiB).
DECIMALS = 4


class DoesNotFit(Unprocessable):
    """A job whose estimated peak per device exceeds the device's memory (422)."""


@dataclass(frozen=True)
class Assessment:
    """A job's plan and memory, as far as its model's config tells them."""

    request: JobRequest
    device_gib: float
    plan: PrunePlan | None = None
    memory: memory.JobMemory | None = None
    #: The fewest of :data:`app.core.memory.DEVICE_COUNTS` devices the job fits on.
    min_devices: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """Whether the job fits its devices (a job without an estimate is let through)."""
        return self.memory is None or self.memory.fits


def device_gib(request: JobRequest) -> float:
    """The memory of one device the job is checked against: its own, or the setting's."""
    if request.device_memory_gib is not None:
        return request.device_memory_gib
    return get_settings().device_memory_gib


def job_run(request: JobRequest, dense: memory.ModelShape, plan: PrunePlan) -> memory.JobRun:
    """How the job runs, as the memory model needs it: the shapes before and after ``plan``, the
    masked weights, and the request's training settings as a worker resolves them (``auto``: a
    CUDA device, bf16 compute there, fp32 on a CPU)."""
    device: Literal["cuda", "cpu"] = "cpu" if request.device == "cpu" else "cuda"
    dtype: Literal["bfloat16", "float32"]
    if request.dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    else:
        dtype = request.dtype
    recipe = request.recipe
    lora = recipe if isinstance(recipe, LoraRecipe) else None
    return memory.JobRun.planned(
        dense,
        plan,
        recipe=recipe.kind,
        lora_rank=lora.rank if lora is not None else 16,
        lora_targets=tuple(lora.target_modules) if lora is not None else memory.PROJECTION_NAMES,
        seq_len=request.seq_len,
        batch_size=request.batch_size,
        grad_accum=request.grad_accum,
        checkpointing=request.activation_checkpointing,
        device=device,
        dtype=dtype,
    )


def lora_target_modules(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The Linear modules of a decoder layer that LoRA can adapt, for a config the pruning plan
    reads: Llama, Qwen2, Qwen3 and Mistral layers all have the same seven projections (the plan
    refuses every other architecture before this is asked)."""
    del config  # one answer for every architecture the plan reads
    return memory.PROJECTION_NAMES


def check_lora_targets(request: JobRequest, config: Mapping[str, Any]) -> None:
    """A LoRA job's ``target_modules`` must be projections of the model's decoder layers: a 422
    naming those it does not have and those it has."""
    recipe = request.recipe
    if not isinstance(recipe, LoraRecipe):
        return
    have = lora_target_modules(config)
    unknown = [name for name in recipe.target_modules if name not in have]
    if unknown:
        kind = str(config.get("model_type"))
        raise Unprocessable(
            f"recipe.target_modules: the model ({kind}) has no module "
            f"{', '.join(repr(name) for name in unknown)} to adapt; its decoder layers' "
            f"projections are {', '.join(have)}"
        )


def _gib(n: float) -> str:
    return f"{n / memory.GIB:.1f} GiB"


def verdict(assessment: Assessment) -> str:
    """One sentence on whether the job fits: its need per device, the device's memory and the
    fewest devices that fit (or that none does)."""
    mem, request = assessment.memory, assessment.request
    if mem is None:
        return "no memory estimate"
    peak = mem.peak
    where = (
        "the preparation, the dense model on device 0"
        if peak.phase == "preparation"
        else "post-training"
    )
    plural = "s" if mem.devices > 1 else ""
    text = (
        f"the job needs {_gib(mem.per_device)} per device on {mem.devices} device{plural} "
        f"({_gib(peak.total)} at the peak of {where} + {_gib(mem.margin)} margin), "
        f"{'within' if mem.fits else 'more than'} the {assessment.device_gib:g} GiB of a device"
    )
    fewest = assessment.min_devices
    if fewest is None:
        counts = memory.DEVICE_COUNTS
        text += f"; with these settings it fits on no count of devices from 1 to {counts[-1]}"
        if mem.preparation.total + mem.margin > mem.device_bytes:
            text += (
                f" (the preparation alone needs {_gib(mem.preparation.total + mem.margin)}: it "
                "runs on device 0 alone, whatever the count)"
            )
    elif fewest != request.devices or not mem.fits:
        text += f"; it fits on {fewest} device{'s' if fewest > 1 else ''} (the fewest)"
    return text


def assess(request: JobRequest, config: Mapping[str, Any] | None) -> Assessment:
    """The plan and the memory of ``request`` on the model ``config`` describes.

    Raises Unprocessable (422) when the plan refuses the request (a ρ out of the method's
    reach: the message names the maximum).
    """
    gib = device_gib(request)
    try:
        plan = plan_pruning(config or {}, request.method, request.rho)
    except UnsupportedConfigError as exc:
        note = (
            f"no plan and no memory estimate: the model's config.json is not one the plan reads "
            f"({exc}); the worker checks the loaded model"
        )
        if isinstance(request.recipe, LoraRecipe):
            note += " (and the LoRA target_modules)"
        return Assessment(request, gib, warnings=[note])
    except PlanError as exc:
        raise Unprocessable(str(exc)) from None
    assert config is not None  # the plan read it
    check_lora_targets(request, config)
    dense = memory.ModelShape.from_config(config, name=request.model)
    run = job_run(request, dense, plan)
    device_bytes = gib * memory.GIB
    estimate = memory.job_memory(run, request.devices, device_bytes)
    fewest = memory.min_devices(run, device_bytes)
    assessment = Assessment(request, gib, plan, estimate, fewest)
    if not estimate.fits:
        assessment.warnings.append(f"does not fit: {verdict(assessment)}")
    if request.device == "cpu" and request.devices > 1:
        assessment.warnings.append(
            f"device cpu: the {request.devices} processes share one host's memory, "
            f"{request.devices} x the figure per device"
        )
    return assessment


def admit(request: JobRequest, config: Mapping[str, Any] | None) -> Assessment:
    """The assessment of a job about to be stored; :class:`DoesNotFit` (422) when it does not
    fit its devices."""
    assessment = assess(request, config)
    if not assessment.fits:
        raise DoesNotFit(
            f"{verdict(assessment)}. Ask for more devices, devices with more memory "
            "(device_memory_gib), a smaller batch_size or seq_len, or activation_checkpointing"
        )
    return assessment


def _round(n: float) -> float:
    return round(n / memory.GIB, DECIMALS)


def dry_run_out(assessment: Assessment) -> dict[str, Any]:
    """The answer of a dry run (``app.schemas.jobs.JobDryRun``)."""
    plan, mem = assessment.plan, assessment.memory
    memory_out = None
    if mem is not None:
        memory_out = {
            "per_device_gib": _round(mem.per_device),
            "device_gib": assessment.device_gib,
            "fits": mem.fits,
            "min_devices": assessment.min_devices,
            "devices": mem.devices,
            "phase": mem.peak.phase,
            "training_gib": _round(mem.training.total),
            "preparation_gib": _round(mem.preparation.total),
            "breakdown": {name: _round(n) for name, n in mem.breakdown().items()},
        }
    plan_out = None
    if plan is not None:
        plan_out = {
            "method": plan.method,
            "target_rho": plan.target_rho,
            "rho": plan.rho,
            "n0": plan.n0,
            "n_after": plan.n_after,
            "shape": plan.shape,
        }
    return {
        "n0": plan.n0 if plan is not None else None,
        "plan": plan_out,
        "memory": memory_out,
        "warnings": list(assessment.warnings),
    }
