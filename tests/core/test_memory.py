"""The memory model (app/core/memory.py): what it says of published shapes read from their
config.json alone, and how close it comes to the peaks measured on CPU while the job's own code
prunes and post-trains the project's tiny models (benchmarks/memory_model.py, measure_job)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core import memory
from app.core.memory import GIB, JobRun, ModelShape, job_memory, job_setup, training_peak
from app.core.pruning import parameter_count, plan_pruning
from benchmarks.memory_model import MEASURED_JOBS, measure_job, tiny_config
from tests.shapes import LLAMA_31_8B, QWEN25_7B, SMOLLM2_135M

LLAMA_8B, QWEN_7B = LLAMA_31_8B, QWEN25_7B
CONFIGS = {"Llama-3.1-8B": LLAMA_8B, "Qwen2.5-7B": QWEN_7B, "SmolLM2-135M": SMOLLM2_135M}
#: The safetensors totals of the hub checkpoints.
TOTALS = {"Llama-3.1-8B": 8_030_261_248, "Qwen2.5-7B": 7_615_616_512, "SmolLM2-135M": 134_515_008}
DEVICE_80 = 80 * GIB


def run_of(config: dict[str, Any], method: str = "width", rho: float = 0.25, **kw: Any) -> JobRun:
    settings: dict[str, Any] = {"seq_len": 2048, "batch_size": 4, **kw}
    return JobRun.planned(
        ModelShape.from_config(config), plan_pruning(config, method, rho), **settings
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_read_from_config_count_the_published_parameters(name: str) -> None:
    config = CONFIGS[name]
    shape = ModelShape.from_config(config)
    assert shape.n_params == parameter_count(config) == TOTALS[name]
    assert shape.qkv_bias == (config["model_type"] == "qwen2")
    assert shape.tied == config["tie_word_embeddings"]


def test_importing_the_memory_model_pulls_in_no_torch() -> None:
    code = "import sys, app.core.memory; print(sorted({m.split('.')[0] for m in sys.modules}))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    loaded = out.stdout
    assert "'torch'" not in loaded and "'transformers'" not in loaded, loaded


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_devices_split_the_states_not_the_activations(name: str) -> None:
    run = run_of(CONFIGS[name], checkpointing=True)
    pruned = run.pruned.n_params
    peaks = {n: job_memory(run, n, DEVICE_80) for n in (1, 2, 4, 8)}
    for n, mem in peaks.items():
        assert mem.training.weights == round(4 * pruned / n)
        assert mem.training.optimizer == round(8 * pruned / n)
        assert (mem.training.fsdp_buffers > 0) == (n > 1)
        # The preparation is the dense model's, on device 0, whatever the count.
        assert mem.preparation == peaks[1].preparation
        assert mem.preparation.weights == 4 * run.dense.n_params
    steps = [training_peak(run.pruned, run.setup(n)) for n in (2, 4, 8)]
    assert len({s.activations for s in steps}) == 1  # every device runs its own micro-batch
    totals = [peaks[n].training.total for n in (1, 2, 4, 8)]
    assert totals[1:] == sorted(totals[1:], reverse=True)


def test_eight_billion_on_one_device_needs_its_states_and_more() -> None:
    """16 bytes a parameter before any activation: the 120 GiB that no 80 GiB GPU holds."""
    dense = ModelShape.from_config(LLAMA_8B)
    peak = training_peak(dense, job_setup(1, 2048, 8, False))
    assert peak.weights + peak.optimizer + 4 * dense.n_params == 16 * dense.n_params
    assert 16 * dense.n_params / GIB == pytest.approx(119.7, abs=0.05)
    assert peak.total > 16 * dense.n_params
    assert not job_memory(run_of(LLAMA_8B, "depth", 0.15), 1, DEVICE_80).fits


def test_the_chunked_loss_keeps_one_chunk_of_logits() -> None:
    """The default micro-batch of 8 x 2048 tokens at a 128k vocabulary: 23.5 GiB of float32
    logits and their gradients in Hugging Face's loss, one chunk's in the job's."""
    dense = ModelShape.from_config(LLAMA_8B)
    full = memory.stages(dense, memory.Setup(1, 2048, 8, False, fsdp=False)).at_loss
    assert full.logits == 12 * 128256 * 8 * 2048
    assert full.logits / GIB == pytest.approx(23.5, abs=0.05)
    chunked = memory.stages(dense, job_setup(1, 2048, 8, False)).at_loss
    chunk = memory.loss_chunk_tokens(128256)
    assert chunk == 1024
    assert chunked.logits <= 8 * chunk * 128256 < full.logits / 20


def test_the_chunk_is_the_workers() -> None:
    from workers.ml.evaluate import loss_chunk_tokens

    for vocab in (512, 4096, 49152, 65536, 128256, 152064, 1):
        assert memory.loss_chunk_tokens(vocab) == loss_chunk_tokens(vocab)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_min_devices_is_the_first_power_of_two_that_fits(name: str, checkpointing: bool) -> None:
    run = run_of(CONFIGS[name], checkpointing=checkpointing)
    n = memory.min_devices(run, DEVICE_80)
    if n is None:
        assert not any(job_memory(run, k, DEVICE_80).fits for k in memory.DEVICE_COUNTS)
        return
    assert job_memory(run, n, DEVICE_80).fits
    assert all(not job_memory(run, k, DEVICE_80).fits for k in memory.DEVICE_COUNTS if k < n)


def test_the_counts_tried_are_powers_of_two_up_to_the_requests_bound() -> None:
    assert memory.DEVICE_COUNTS == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    # A preparation larger than the device: no count helps, it runs on device 0 alone.
    run = run_of(LLAMA_8B, "depth", 0.5, checkpointing=True)
    assert memory.min_devices(run, 20 * GIB) is None


def test_the_margin_is_a_tenth_of_the_device_and_the_parts_add_up() -> None:
    mem = job_memory(run_of(QWEN_7B, checkpointing=True), 2, DEVICE_80)
    assert mem.margin == round(0.1 * DEVICE_80)
    assert mem.per_device == mem.peak.total + mem.margin
    assert sum(mem.breakdown().values()) == mem.per_device
    assert mem.fits == (mem.per_device <= DEVICE_80)


def test_mask_methods_keep_the_shape_and_add_a_byte_per_masked_weight() -> None:
    dense = ModelShape.from_config(LLAMA_8B)
    plan = plan_pruning(LLAMA_8B, "2:4", 0.25)
    masked, largest = dense.masked_by(plan)
    assert dense.pruned(plan).n_params == dense.n_params
    zeroed = plan.n0 - plan.n_after
    assert masked == 2 * zeroed  # a 2:4 projection loses half its weights
    assert largest == 4096 * 14336  # an MLP projection
    unstructured = plan_pruning(LLAMA_8B, "unstructured", 0.25)
    assert dense.masked_by(unstructured) == (dense.projection_weights, dense.largest_projection)
    assert dense.masked_by(plan_pruning(LLAMA_8B, "depth", 0.25)) == (0, 0)
    run = run_of(LLAMA_8B, "2:4", 0.25, checkpointing=True)
    assert job_memory(run, 4, DEVICE_80).training.masks == round(masked / 4)


def test_structural_methods_train_the_pruned_shape() -> None:
    dense = ModelShape.from_config(QWEN_7B)
    depth = dense.pruned(plan_pruning(QWEN_7B, "depth", 0.25))
    width = dense.pruned(plan_pruning(QWEN_7B, "width", 0.25))
    assert (
        depth.layers < dense.layers
        and depth.n_params == plan_pruning(QWEN_7B, "depth", 0.25).n_after
    )
    assert width.intermediate < dense.intermediate
    assert width.n_params == plan_pruning(QWEN_7B, "width", 0.25).n_after


def test_a_cpu_job_computes_in_fp32_and_a_bfloat16_one_by_autocast() -> None:
    run = run_of(SMOLLM2_135M, device="cpu", dtype="float32")
    assert run.setup(1).compute == "fp32" and not run.setup(1).fused_optimizer
    cuda = run_of(SMOLLM2_135M)
    assert cuda.setup(4).compute == "bf16" and cuda.setup(4).bf16_by == "autocast"
    assert memory.Precision.of(cuda.pruned, cuda.setup(4)).autocast


@pytest.mark.parametrize(
    "job", MEASURED_JOBS, ids=[f"{j[0]}-{j[1]}-{j[2]}-{j[6]}" for j in MEASURED_JOBS]
)
def test_the_model_is_within_15_percent_of_the_peaks_measured_on_cpu(
    job: tuple[str, str, str, int, int, bool, str],
) -> None:
    """The preparation (held-out losses, calibration, pruning) and steps of the job's Trainer,
    on the project's own tiny models, measured by the CPU allocator's events."""
    arch, size, method, seq_len, batch, checkpointing, dtype = job
    measured = measure_job(
        tiny_config(arch, size),
        method=method,
        seq_len=seq_len,
        batch_size=batch,
        checkpointing=checkpointing,
        dtype=dtype,
    )
    for phase in ("preparation", "training"):
        assert abs(measured.error(phase)) <= 0.15, (phase, measured)


def test_a_sharded_step_is_within_15_percent_of_its_peak_on_one_cpu_process() -> None:
    """FSDP2 as the job shards (fp32 weights gathered, bf16 by autocast), in a process group of
    one gloo process of its own: the buffers, the gathered root and autocast's copies."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "import json\n"
        "from benchmarks.memory_model import measure_sharded_step, tiny_config\n"
        "config = tiny_config('llama', 'small')\n"
        "print(json.dumps([measure_sharded_step(config, checkpointing=c) for c in (0, 1)]))\n"
        # Without the interpreter's teardown, as a job's rank ends (workers/rank.py: leave).
        "from workers.rank import leave\n"
        "leave(0)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    for measured, modelled in json.loads(out.stdout.strip().splitlines()[-1]):
        assert abs(modelled / measured - 1) <= 0.15, (measured, modelled)


def test_shapes_round_trip_through_a_config(tmp_path: Path) -> None:
    shape = ModelShape.from_config(QWEN_7B)
    (tmp_path / "config.json").write_text(json.dumps(shape.hf_config()))
    again = ModelShape.from_config(json.loads((tmp_path / "config.json").read_text()))
    assert again.n_params == shape.n_params and again.qkv_bias


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_an_8b_distill_job_needs_more_than_full_and_lora_less(devices: int) -> None:
    plan = plan_pruning(LLAMA_8B, "width", 0.25)
    dense = ModelShape.from_config(LLAMA_8B)
    settings: dict[str, Any] = {"seq_len": 2048, "batch_size": 2, "checkpointing": True}
    full, lora, distill = (
        job_memory(JobRun.planned(dense, plan, recipe=recipe, **settings), devices, DEVICE_80)
        for recipe in ("full", "lora", "distill")
    )
    assert lora.training.total < full.training.total < distill.training.total
    # LoRA: the frozen weights stay, their gradients and moments go, the adapters come.
    assert lora.training.weights == full.training.weights
    assert lora.training.optimizer == 0 and full.training.optimizer > 0
    pruned = dense.pruned(plan)
    adapters = pruned.lora_params(16, memory.PROJECTION_NAMES)
    assert lora.training.adapters == round(16 * adapters / devices)
    # Distill: the full recipe's parts, plus the dense teacher's weights (sharded), its gathered
    # root and layer under FSDP, and its forward.
    assert {**distill.training.parts(), "teacher": 0} == full.training.parts()
    gathered = 4 * (dense.root_params + dense.layer_params) if devices > 1 else 0
    assert distill.training.teacher > round(4 * dense.n_params / devices) + gathered
    assert distill.training.teacher < round(4 * dense.n_params / devices) + gathered + 4 * GIB
    # The preparation (the dense model pruned on device 0) is the same whatever the recipe.
    assert lora.preparation == full.preparation == distill.preparation


def test_lora_adapters_follow_their_rank_and_targets() -> None:
    dense = ModelShape.from_config(LLAMA_8B)
    plan = plan_pruning(LLAMA_8B, "depth", 0.25)
    settings: dict[str, Any] = {"seq_len": 1024, "batch_size": 1, "recipe": "lora"}
    small = JobRun.planned(dense, plan, lora_rank=8, lora_targets=("q_proj", "v_proj"), **settings)
    large = JobRun.planned(dense, plan, lora_rank=64, **settings)
    layers = dense.pruned(plan).layers
    assert small.adapter_params == layers * 8 * ((4096 + 4096) + (4096 + 1024))
    assert large.adapter_params > small.adapter_params
    assert JobRun.planned(dense, plan, seq_len=1024, batch_size=1).adapter_params == 0
    assert (
        job_memory(large, 1, DEVICE_80).training.adapters
        > job_memory(small, 1, DEVICE_80).training.adapters
    )


def test_distill_needs_the_teachers_shape() -> None:
    shape = ModelShape.from_config(SMOLLM2_135M)
    with pytest.raises(ValueError, match="teacher"):
        training_peak(shape, job_setup(1, 128, 1, False), recipe="distill")
