"""Admission (app/services/admission.py): a job's plan and memory from its model's config.json,
the 422 of a job that does not fit its devices, and the answer of a dry run."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import memory
from app.core.config import get_settings
from app.core.errors import Unprocessable
from app.core.pruning import plan_pruning
from app.schemas.jobs import EXAMPLE_DRY_RUN, EXAMPLE_DRY_RUN_REQUEST, JobDryRun, JobRequest
from app.services import admission
from tests.core.test_memory import CONFIGS, LLAMA_8B, QWEN_7B, SMOLLM2_135M, TOTALS


def request(**overrides: Any) -> JobRequest:
    body: dict[str, Any] = {
        "model": "m",
        "method": "width",
        "rho": 0.25,
        "tokens": 1e9,
        "dataset": {"path": "corpus.txt"},
        "seq_len": 2048,
        "batch_size": 4,
    }
    return JobRequest.model_validate({**body, **overrides})


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_assessment_at_published_shapes(name: str, devices: int, checkpointing: bool) -> None:
    config = CONFIGS[name]
    job = request(devices=devices, activation_checkpointing=checkpointing)
    a = admission.assess(job, config)
    assert a.plan == plan_pruning(config, "width", 0.25) and a.plan.n0 == TOTALS[name]
    assert a.memory is not None and a.memory.devices == devices
    assert a.device_gib == 80.0
    assert a.fits == a.memory.fits == (a.memory.per_device <= 80 * memory.GIB)
    if a.min_devices is not None:
        assert a.fits == (devices >= a.min_devices)
    else:
        assert not a.fits
    assert (not a.fits) == any(w.startswith("does not fit: ") for w in a.warnings)


def test_what_fits_eighty_gib() -> None:
    """SmolLM2-135M fits one device; Qwen2.5-7B and Llama-3.1-8B, a quarter pruned by width,
    need more than one, and with checkpointing fewer than without."""
    small = admission.assess(request(), SMOLLM2_135M)
    assert small.fits and small.min_devices == 1
    for config in (LLAMA_8B, QWEN_7B):
        one = admission.assess(request(), config)
        assert not one.fits and one.memory is not None
        assert one.memory.training.total > 16 * 0.75 * one.memory.training.weights / 4
        ckpt = admission.assess(request(activation_checkpointing=True), config)
        assert ckpt.min_devices is not None and ckpt.min_devices > 1
        assert one.min_devices is None or one.min_devices >= ckpt.min_devices


def test_a_job_that_does_not_fit_is_refused_naming_need_device_and_fewest_devices() -> None:
    job = request(activation_checkpointing=True)
    a = admission.assess(job, LLAMA_8B)
    assert a.memory is not None and a.min_devices is not None
    with pytest.raises(admission.DoesNotFit) as refused:
        admission.admit(job, LLAMA_8B)
    message = refused.value.detail
    assert refused.value.status_code == 422
    assert f"needs {a.memory.per_device / memory.GIB:.1f} GiB per device on 1 device" in message
    assert "more than the 80 GiB of a device" in message
    assert f"it fits on {a.min_devices} devices (the fewest)" in message
    fitting = request(activation_checkpointing=True, devices=a.min_devices)
    assert admission.admit(fitting, LLAMA_8B).fits


def test_a_job_that_fits_no_count_says_so() -> None:
    with pytest.raises(admission.DoesNotFit) as refused:
        admission.admit(request(device_memory_gib=16), LLAMA_8B)
    assert "more than the 16 GiB of a device" in refused.value.detail
    assert "fits on no count of devices from 1 to 1024" in refused.value.detail
    assert "the preparation alone needs" in refused.value.detail
    assert "runs on device 0 alone, whatever the count" in refused.value.detail


def test_the_device_memory_is_the_requests_or_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert admission.device_gib(request()) == 80.0
    assert admission.device_gib(request(device_memory_gib=141)) == 141.0
    monkeypatch.setenv("DEVICE_MEMORY_GIB", "192")
    get_settings.cache_clear()
    try:
        assert admission.device_gib(request()) == 192.0
        assert admission.admit(request(activation_checkpointing=True), QWEN_7B).fits
    finally:
        get_settings.cache_clear()


def test_a_config_the_plan_cannot_read_is_admitted_without_an_estimate() -> None:
    for config in (None, {"model_type": "llama"}, {"model_type": "gpt2", "n_embd": 64}):
        a = admission.admit(request(), config)
        assert a.plan is None and a.memory is None and a.fits
        assert "no plan and no memory estimate" in a.warnings[0]
        out = admission.dry_run_out(a)
        assert out == {"n0": None, "plan": None, "memory": None, "warnings": a.warnings}


def test_a_rho_out_of_reach_is_the_plans_422() -> None:
    with pytest.raises(Unprocessable, match="width pruning can remove at most rho="):
        admission.assess(request(rho=0.95), LLAMA_8B)


def test_a_cpu_job_is_estimated_in_fp32_and_warns_of_its_shared_host() -> None:
    a = admission.assess(request(device="cpu", devices=2), SMOLLM2_135M)
    assert a.memory is not None
    run = admission.job_run(request(device="cpu"), memory.ModelShape.from_config(SMOLLM2_135M),
                            plan_pruning(SMOLLM2_135M, "width", 0.25))  # fmt: skip
    assert (run.device, run.dtype) == ("cpu", "float32")
    assert any("share one host's memory" in w for w in a.warnings)


def test_the_dry_run_answer_has_the_schema_and_the_documented_example() -> None:
    out = admission.dry_run_out(admission.assess(JobRequest(**EXAMPLE_DRY_RUN_REQUEST), LLAMA_8B))
    assert JobDryRun.model_validate(out).model_dump(mode="json") == out
    assert out == EXAMPLE_DRY_RUN
    mem = out["memory"]
    assert sum(mem["breakdown"].values()) == pytest.approx(mem["per_device_gib"], abs=1e-3)


def test_lora_targets_are_checked_against_the_models_projections() -> None:
    lora = request(recipe={"kind": "lora", "target_modules": ["q_proj", "c_attn", "lm_head"]})
    with pytest.raises(Unprocessable) as refused:
        admission.assess(lora, QWEN_7B)
    message = str(refused.value)
    assert "'c_attn', 'lm_head'" in message and "(qwen2)" in message
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in message
    fine = request(recipe={"kind": "lora", "target_modules": ["gate_proj"]})
    assert admission.assess(fine, QWEN_7B).memory is not None


def test_lora_targets_of_a_config_the_plan_cannot_read_are_left_to_the_worker() -> None:
    lora = request(recipe={"kind": "lora", "target_modules": ["c_attn"]})
    unread = admission.assess(lora, {"model_type": "gpt2"})
    assert unread.memory is None and "LoRA target_modules" in unread.warnings[0]


def test_the_dry_run_breakdown_names_the_adapters_and_the_teacher() -> None:
    for kind, part in (("lora", "adapters"), ("distill", "teacher")):
        answer = admission.dry_run_out(
            admission.assess(request(recipe={"kind": kind}), SMOLLM2_135M)
        )
        breakdown = JobDryRun.model_validate(answer).memory.breakdown  # type: ignore[union-attr]
        assert getattr(breakdown, part) > 0, kind
