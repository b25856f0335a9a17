"""The GPU check: everything that needs a CUDA device, in one run of at most five minutes on one
H200, summarised in one JSON file (docs/scaling.md, "Benchmarks on a GPU").

Sections, run in this order, each in a process of its own (an out-of-memory or a CUDA error in
one leaves the others a clean device) and killed at its time budget; a section that fails or
runs out of time records its error and the check goes on. The budgets add up to 300 s, so the
whole check ends within five minutes plus the seconds this process takes to start them:

=========== ====== ==========================================================================
section     budget what
=========== ====== ==========================================================================
device       15 s  torch and CUDA versions, the device's name, memory and capability
gpu_tests    45 s  ``pytest -m gpu``: passed, failed and skipped counts, the exit code
job          90 s  one job end to end through the project's launcher
                   (``workers.launch.launch_group``, torchrun, ``workers.rank``): one rank,
                   the sharded strategy (FSDP2 over NCCL), 2:4, activation checkpointing, the
                   job's compile choice; its rank is killed (``kill -9``) once the state of its
                   first checkpoint is complete, and the launcher's relaunch resumes it from
                   that state; status, checkpoints (each recorded once), losses, seconds
throughput  100 s  tokens/s, MFU and peak memory of SmolLM2-135M (8 x 2048 tokens a step) and a
                   Llama-3.2-1B-shaped model (4 x 2048), eager then compiled, 3 + 12 steps each,
                   by ``benchmarks/gpu_train_bench.py`` (the job's strategy, Trainer and config)
attention    15 s  the SDPA kernel the model's attention runs in bf16 (autocast) and fp32:
                   the op the profiler sees with no restriction, and which backends run at all
memory       35 s  ``app.core.memory``'s training peak of a one-device job against
                   ``torch.cuda.max_memory_allocated`` for three shapes, with their ratio
=========== ====== ==========================================================================

``--smoke`` runs every section on CPU at toy sizes (the suite's ``tests/benchmarks/
test_gpu_check.py`` runs it): a 4-layer Llama for the job (gloo instead of NCCL), the tiny
model for throughput (compiled by dynamo alone, no inductor), the CPU allocator's peak from the
profiler for memory, and only the GPU tests' own file. Without a CUDA device and without
``--smoke`` it prints ``no CUDA device: skipped`` and exits 0.

    python benchmarks/gpu_check.py [--out DIR]          # DIR/gpu_check.json; default $OUT or
                                                        # benchmarks/results/gpu
    python benchmarks/gpu_check.py --smoke --out /tmp/x # anywhere, about a minute on 2 cores

Exit status: 0 when every section succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script: the root holds `benchmarks` and `workers`

RESULTS = ROOT / "benchmarks" / "results" / "gpu"
SUMMARY = "gpu_check.json"
SKIPPED = "no CUDA device: skipped"

#: Seconds each section may take on the device, in the order they run (300 in all).
BUDGET_S: dict[str, int] = {
    "device": 15,
    "gpu_tests": 45,
    "job": 90,
    "throughput": 100,
    "attention": 15,
    "memory": 35,
}
SECTIONS = tuple(BUDGET_S)
#: In smoke mode the budgets are the CPU's, this many times the device's: a shared CPU runs
#: the toy sizes slower than a GPU runs the real ones, and the smoke run checks the script.
SMOKE_BUDGET_FACTOR = 4

Emit = Callable[[dict[str, Any]], None]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- device


def device_section(smoke: bool, workdir: Path, emit: Emit) -> None:
    """What torch sees: versions, and the device's name, memory and capability."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {
            "kind": "cuda",
            "devices": torch.cuda.device_count(),
            "name": p.name,
            "total_memory_gib": round(p.total_memory / 2**30, 2),
            "capability": f"{p.major}.{p.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),  # type: ignore[no-untyped-call]
        }
        if shutil.which("nvidia-smi"):
            query = "name,memory.total,driver_version,clocks.max.sm"
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            info["nvidia_smi"] = smi.stdout.strip()
    else:
        info |= {"kind": "cpu", "devices": 0, "name": platform.processor() or platform.machine()}
    emit(info)


# --------------------------------------------------------------------------- GPU tests


def gpu_tests(smoke: bool, out: Path, budget_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` (in smoke mode only the GPU tests' own file, to keep the run short),
    counted from its JUnit report."""
    junit = out / "pytest-gpu.xml"
    paths = ["tests/benchmarks/test_gpu_smoke.py"] if smoke else ["tests"]
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    command += ["--junitxml", str(junit), *paths]
    try:
        run = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"exceeded its budget of {budget_s:.0f} s", "command": exc.cmd}
    (out / "pytest-gpu.txt").write_text(run.stdout + run.stderr)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if junit.is_file():
        for suite in ElementTree.parse(junit).getroot().iter("testsuite"):
            total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            counts["passed"] += total - skipped - failed
            counts["failed"] += failed
            counts["skipped"] += skipped
    result: dict[str, Any] = {**counts, "exit_code": run.returncode, "paths": paths}
    if run.returncode != 0:
        result["error"] = f"pytest exited {run.returncode}: {run.stdout.strip()[-1500:]}"
    return result


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class JobSize:
    """The job of the check: its model's shape and how long it trains."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    corpus_bytes: int
    seq_len: int
    batch_size: int
    steps: int
    checkpoints: int


#: On CUDA a model of SmolLM2's width, 8 layers, 600 steps of 16 x 512 tokens; on CPU a
#: 4-layer toy trained 24 steps of 8 x 32 tokens.
JOB_SIZES = {
    "cuda": JobSize(576, 8, 9, 3, 1536, 8192, 4_000_000, 512, 16, 600, 6),
    "smoke": JobSize(64, 4, 4, 2, 128, 320, 120_000, 32, 8, 24, 3),
}


def _rank_log_tail(workdir: Path, limit: int = 3000) -> str:
    logs = sorted((workdir / "rank-logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    text = "".join(p.read_text(errors="replace")[-limit:] for p in logs[-2:])
    return text[-limit:]


def job_section(smoke: bool, workdir: Path, emit: Emit) -> None:
    """One job of one rank through ``launch_group``, killed once and resumed (the docstring)."""
    size = JOB_SIZES["smoke" if smoke else "cuda"]
    root = workdir / "job"
    var = {
        "DATABASE_URL": f"sqlite:///{root / 'p2law.sqlite3'}",
        "MODEL_ROOT": str(root / "models"),
        "DATA_ROOT": str(root / "data"),
        "ARTIFACT_ROOT": str(root / "artifacts"),
        "BROKER_DIR": str(root / "broker"),
    }
    os.environ.update(var)  # this process's own, inherited by the ranks
    for name in ("REDIS_URL", "API_KEY", "P2LAW_PAUSE_PREPARE_S", "P2LAW_PAUSE_SAVE_S"):
        os.environ.pop(name, None)
    for folder in ("MODEL_ROOT", "DATA_ROOT", "ARTIFACT_ROOT"):
        Path(var[folder]).mkdir(parents=True, exist_ok=True)

    import torch

    from app.core.config import get_settings
    from app.core.paths import resolve_job_paths
    from app.db.migrate import upgrade
    from app.db.session import session_scope
    from app.repositories import jobs as jobs_repo
    from app.repositories import observations as observations_repo
    from app.schemas.jobs import JobRequest
    from app.services import job_lease
    from app.services import jobs as jobs_service
    from workers.attempt import job_dirs
    from workers.launch import launch_group
    from workers.lease import Heartbeat, lease_owner
    from workers.ml.checkpoint import STATE_PREFIX, latest_complete_state
    from workers.ml.job import JobOutcome, JobSpec, checkpoint_steps
    from workers.ml.make_model import Shape, make_model
    from workers.ml.train import compile_wanted

    get_settings.cache_clear()
    upgrade()
    cuda = torch.cuda.is_available() and not smoke
    started = time.monotonic()
    make_model(
        Path(var["MODEL_ROOT"]) / "check-llama",
        arch="llama",
        size=None,
        shape=Shape(size.hidden, size.layers, size.heads, size.kv_heads, size.intermediate),
        corpus_out=Path(var["DATA_ROOT"]) / "corpus.txt",
        max_corpus_bytes=size.corpus_bytes,
        tokens=20 * size.batch_size * size.seq_len,  # a start, not a pretrained model
        vocab=size.vocab,
        seq_len=size.seq_len,
        batch_size=size.batch_size,
        device="cuda" if cuda else "cpu",
        progress=False,
    )
    made = time.monotonic() - started
    print(f"model made in {made:.1f} s", flush=True)
    body: dict[str, Any] = {
        "model": "check-llama",
        "method": "2:4",
        "rho": 0.2,
        "tokens": size.steps * size.batch_size * size.seq_len,
        "dataset": {"path": "corpus.txt", "eval_tokens": 8 * size.seq_len * size.batch_size},
        "checkpoints": size.checkpoints,
        "seq_len": size.seq_len,
        "batch_size": size.batch_size,
        "lr": 1e-3,
        "calib_samples": 8,
        "devices": 1,
        "device": "cuda" if cuda else "cpu",
        "activation_checkpointing": True,
        "family": "gpu-check",
        "seed": 1,
    }
    with session_scope() as session:
        job, _ = jobs_service.submit(session, JobRequest.model_validate(body))
        job_id = job.id
    claimed = job_lease.claim(job_id, lease_owner(), get_settings().job_lease_s)
    if claimed is None:
        raise RuntimeError("the check's job could not be claimed")
    spec = JobSpec.build(claimed.request, resolve_job_paths(claimed.request), cuda=cuda)
    workdir_job, artifact_dir = job_dirs(job_id)
    pid_file = workdir_job / "rank-0.pid"
    steps = checkpoint_steps(spec.total_steps, size.checkpoints)
    first_checkpoint = steps[0]

    def recorded() -> list[tuple[float, float]]:
        with session_scope() as session:
            rows, _ = observations_repo.list_page(session, run_id=job_id)
            return [(float(r.tokens), float(r.loss)) for r in rows]

    result: dict[str, Any] = {
        "job_id": job_id,
        "backend": "nccl" if spec.device == "cuda" else "gloo",
        "strategy": "Sharded (FSDP2), 1 rank",
        "method": spec.request.method,
        "device": spec.device,
        "dtype": spec.dtype,
        "activation_checkpointing": spec.request.activation_checkpointing,
        "compiled": compile_wanted(spec.request.compile, spec.device),
        "total_steps": spec.total_steps,
        "expected_checkpoints": len(steps),
        "model_seconds": round(made, 1),
    }
    outcome: list[JobOutcome] = []
    failure: list[BaseException] = []
    t0 = time.monotonic()
    with Heartbeat(claimed.lease) as beat:

        def launch() -> None:
            try:
                outcome.append(
                    launch_group(
                        spec,
                        devices=1,
                        workdir=workdir_job,
                        artifact_dir=artifact_dir,
                        lease=claimed.lease,
                        lease_lost=beat.lost,
                    )
                )
            except BaseException as exc:  # reported below, with the rank's log
                failure.append(exc)

        runner = threading.Thread(target=launch, name="launch-group")
        runner.start()
        killed: dict[str, Any] = {}
        # Watched on the file system, not in the database: a poll of SQLite takes its write
        # lock (BEGIN IMMEDIATE) and would slow the rank's own writes.
        while runner.is_alive() and not killed:
            state = latest_complete_state(workdir_job)
            step = int(state.name.removeprefix(STATE_PREFIX)) if state is not None else 0
            if step >= first_checkpoint and pid_file.is_file():
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                killed = {"pid": pid, "after_state_step": step}
                print(f"killed rank 0 at state {step}, {time.monotonic() - t0:.1f} s", flush=True)
            else:
                time.sleep(0.05)
        runner.join()
    seconds = time.monotonic() - t0
    print(f"launches ended in {seconds:.1f} s", flush=True)
    if failure:
        raise RuntimeError(f"{failure[0]}\n--- rank log ---\n{_rank_log_tail(workdir_job)}")
    (done,) = outcome
    if done.status in ("succeeded", "stopped_early"):
        job_lease.finish(
            claimed.lease, "succeeded", artifact=str(done.artifact) if done.artifact else None
        )
    with session_scope() as session:
        row = jobs_repo.get(session, job_id)
        assert row is not None
        status, attempts, resumed_from = row.status, row.attempts, row.resumed_from_tokens
    final_pid = int(pid_file.read_text()) if pid_file.is_file() else None
    points = recorded()
    result |= {
        "status": done.status,
        "job_status": status,
        "attempts": attempts,
        "seconds": round(seconds, 1),
        "killed": killed or None,
        "relaunched": bool(killed) and final_pid not in (None, killed.get("pid")),
        "resumed_from_tokens": resumed_from,
        "checkpoints": [{"tokens": t, "loss": round(loss, 5)} for t, loss in points],
        "recorded_once": len(points) == len({t for t, _ in points}),
        "l0": done.measured.l0,
        "loss_after_prune": done.measured.loss_after_prune,
        "rho": done.measured.rho,
        "artifact": str(done.artifact) if done.artifact else None,
        "artifact_keeps_2of4": _keeps_2of4(done.artifact, done.measured.details),
    }
    emit(result)
    problems = []
    if done.status != "succeeded":
        problems.append(f"the job ended {done.status}: {done.reason}")
    if not killed:
        problems.append("the job ended before its rank could be killed: no resume was checked")
    elif not result["relaunched"] or resumed_from is None:
        problems.append("the killed rank's job was not relaunched and resumed")
    if len(points) != result["expected_checkpoints"] or not result["recorded_once"]:
        problems.append(f"checkpoints recorded {[t for t, _ in points]}, not each once")
    if problems:
        raise RuntimeError("; ".join(problems))


def _keeps_2of4(artifact: Path | None, details: dict[str, Any]) -> bool | None:
    """Whether every layer the job made 2:4 still has two zeros in each group of four."""
    if artifact is None:
        return None
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(artifact), local_files_only=True)
    weights = dict(model.named_parameters())
    layers = details.get("sparsified_layers") or []
    return bool(layers) and all(
        int((weights[f"{name}.weight"].detach().reshape(-1, 4) == 0).sum(dim=1).min()) >= 2
        for name in layers
    )


# --------------------------------------------------------------------------- throughput


def throughput_section(smoke: bool, workdir: Path, emit: Emit) -> None:
    """``gpu_train_bench.bench``, eager then compiled; each run is emitted as it ends."""
    import torch

    from benchmarks import gpu_train_bench as bench

    if smoke:
        device, names, seq_len, steps, warmup = torch.device("cpu"), ["tiny"], 32, 2, 1
        backend: bench.CompileBackend = "eager"
    else:
        device, names, seq_len, steps, warmup = (
            torch.device("cuda"),
            ["smollm2-135m", "llama-3.2-1b"],
            2048,
            12,
            3,
        )
        backend = "inductor"
    model_root = Path(os.environ.get("MODEL_ROOT") or ROOT / "var/models")
    report = bench.bench(
        names,
        device=device,
        seq_len=seq_len,
        steps=steps,
        warmup=warmup,
        compile_modes=(False, True),
        compile_backend=backend,
        model_root=model_root,
        on_entry=emit,
    )
    failed = [r for r in report["results"] if "error" in r]
    if failed:
        raise RuntimeError("; ".join(f"{r['model']}: {r['error']}" for r in failed))


# --------------------------------------------------------------------------- attention

#: What the profiler calls each SDPA backend's op (the CPU's flash kernel has a suffix).
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
}


def attention_section(smoke: bool, workdir: Path, emit: Emit) -> None:
    """For one decoder layer of each model's attention shape, in bf16 (autocast over fp32
    weights, as a job computes) and in fp32: the SDPA op the profiler records with no
    restriction (the one the job runs), and whether each backend runs forward and backward when
    it is the only one allowed."""
    import torch
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks import gpu_train_bench as bench
    from benchmarks.memory_model import SHAPES
    from workers.ml.evaluate import autocast_context

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    seq_len = 2048 if cuda else 64
    shapes = [SHAPES["SmolLM2-135M"], SHAPES["Llama-3.2-1B"]] if cuda else [bench.TINY]
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    found: dict[str, Any] = {"device": device.type, "seq_len": seq_len, "models": []}
    for shape in shapes:
        config = {
            **bench.hf_config(shape, seq_len=seq_len),
            "num_hidden_layers": 1,
            "vocab_size": 1024,
        }
        torch.manual_seed(0)
        with device:
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                AutoConfig.for_model(**config)
            )
        ids = torch.randint(0, 1024, (1, seq_len), device=device)
        entry: dict[str, Any] = {
            "model": shape.name,
            "heads": shape.heads,
            "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "attn_implementation": model.config._attn_implementation,
        }

        def step(model: nn.Module, ids: torch.Tensor, dtype: torch.dtype | None) -> None:
            with autocast_context(device, dtype):
                loss = model(input_ids=ids).logits.float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        for label, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                step(model, ids, dtype)
                if cuda:
                    torch.cuda.synchronize()
            names = {event.name for event in prof.events()}
            chosen = sorted({SDPA_OPS[n] for n in names if n in SDPA_OPS})
            kernels = sorted(
                n
                for n in names
                if not n.startswith("aten::")
                and any(k in n.lower() for k in ("flash", "fmha", "attention", "cudnn"))
            )
            runs: dict[str, Any] = {}
            for name, backend in backends.items():
                try:
                    with sdpa_kernel([backend]):
                        step(model, ids, dtype)
                    runs[name] = True
                except RuntimeError as exc:
                    runs[name] = str(exc).splitlines()[0][:160]
            entry[label] = {"chosen": chosen, "kernels": kernels[:8], "backends": runs}
        found["models"].append(entry)
        emit(found)
        del model
    missing = [
        f"{m['model']} {label}" for m in found["models"] for label in ("bf16", "fp32")
        if not m[label]["chosen"]
    ]  # fmt: skip
    if missing:
        raise RuntimeError(f"no SDPA op seen for {', '.join(missing)}")


# --------------------------------------------------------------------------- memory


def memory_cases(smoke: bool) -> list[tuple[str, dict[str, Any], int, int, bool]]:
    """(name, config, seq_len, micro-batch, activation checkpointing) of the three shapes."""
    if smoke:
        from benchmarks.memory_model import tiny_config

        return [
            ("llama tiny", tiny_config("llama", "tiny"), 32, 4, False),
            ("qwen2 small", tiny_config("qwen2", "small"), 32, 4, True),
            ("llama small", tiny_config("llama", "small"), 64, 2, False),
        ]
    from benchmarks.gpu_train_bench import hf_config
    from benchmarks.memory_model import SHAPES

    return [
        ("SmolLM2-135M", hf_config(SHAPES["SmolLM2-135M"], seq_len=2048), 2048, 8, False),
        ("Qwen2.5-0.5B", hf_config(SHAPES["Qwen2.5-0.5B"], seq_len=2048), 2048, 4, True),
        ("Llama-3.2-1B", hf_config(SHAPES["Llama-3.2-1B"], seq_len=2048), 2048, 4, False),
    ]


def memory_section(smoke: bool, workdir: Path, emit: Emit) -> None:
    """The memory model's training peak of a one-device job (``app.core.memory``:
    ``training_peak`` of ``job_setup(1, ...)``) against the peak the allocator saw while the
    job's own placement and Trainer ran three steps: ``torch.cuda.max_memory_allocated`` on CUDA,
    the CPU allocator's peak from the profiler in smoke mode (``benchmarks.memory_model.
    measured_peaks``). Dense models (no keep-masks), eager blocks: the model counts compiled
    blocks as eager ones."""
    import torch

    from app.core.memory import GIB, ModelShape, job_setup, training_peak
    from benchmarks import gpu_train_bench as bench
    from benchmarks.memory_model import measured_peaks
    from workers.ml.pipeline import train_config
    from workers.ml.strategy import OneDevice
    from workers.ml.train import Trainer

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    rows: list[dict[str, Any]] = []
    for name, config, seq_len, batch, ckpt in memory_cases(smoke):
        spec = bench.bench_spec(
            device=device, seq_len=seq_len, batch_size=batch, steps=3, compile=False
        )
        strategy = OneDevice(spec, device)
        blocks = torch.randint(0, int(config["vocab_size"]), (4 * batch, seq_len))

        def run() -> None:
            model = bench.job_model(config, strategy, checkpointing=ckpt)  # noqa: B023
            trainer = Trainer(
                model,
                blocks,  # noqa: B023
                train_config(spec),  # noqa: B023
                device=strategy.device,  # noqa: B023
                autocast_dtype=strategy.autocast_dtype,  # noqa: B023
            )
            trainer.train_until(3)

        if cuda:
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            run()
            torch.cuda.synchronize(device)
            measured = torch.cuda.max_memory_allocated(device) - base
        else:
            measured = measured_peaks(run)["all"]
        shape = ModelShape.from_config(config, name)
        setup = job_setup(
            1,
            seq_len,
            batch,
            ckpt,
            compute="bf16" if strategy.autocast_dtype is not None else "fp32",
            fused_optimizer=cuda,
        )
        modelled = training_peak(shape, setup).total
        rows.append(
            {
                "shape": name,
                "n_params": shape.n_params,
                "seq_len": seq_len,
                "micro_batch": batch,
                "checkpointing": ckpt,
                "dtype": spec.dtype,
                "estimate_gib": round(modelled / GIB, 4),
                "measured_gib": round(measured / GIB, 4),
                "ratio": round(modelled / measured, 4) if measured > 0 else None,
                "measured_by": "torch.cuda.max_memory_allocated" if cuda else "CPU profiler",
            }
        )
        emit({"device": device.type, "shapes": rows})
    bad = [r["shape"] for r in rows if r["ratio"] is None or not math.isfinite(r["ratio"])]
    if bad:
        raise RuntimeError(f"no measured peak for {', '.join(bad)}")


# --------------------------------------------------------------------------- the runner

SECTION_FUNCTIONS: dict[str, Callable[[bool, Path, Emit], None]] = {
    "device": device_section,
    "job": job_section,
    "throughput": throughput_section,
    "attention": attention_section,
    "memory": memory_section,
}


def run_section(name: str, *, smoke: bool, out: Path, workdir: Path) -> dict[str, Any]:
    """One section in a process of its own, killed at its budget; what it emitted, with its
    seconds, its budget and its error (None when it succeeded)."""
    budget = float(BUDGET_S[name] * (SMOKE_BUDGET_FACTOR if smoke else 1))
    started = time.monotonic()
    if name == "gpu_tests":
        result = gpu_tests(smoke, out, budget)
    else:
        part = workdir / f"{name}.json"
        log = out / f"{name}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--section", name]
        command += ["--result", str(part), "--workdir", str(workdir)]
        command += ["--smoke"] if smoke else []
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code: int | None = process.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                code = None
                os.killpg(process.pid, signal.SIGKILL)  # the section and whatever it started
                process.wait()
        result = json.loads(part.read_text()) if part.is_file() else {}
        if code is None:
            result["error"] = f"exceeded its budget of {budget:.0f} s"
        elif code != 0 and not result.get("error"):
            tail = log.read_text(errors="replace")[-2000:]
            result["error"] = f"exited {code}: {tail}"
    result.setdefault("error", None)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["budget_s"] = budget
    result["ok"] = result["error"] is None
    return result


def section_main(name: str, *, smoke: bool, result: Path, workdir: Path) -> int:
    """Run one section in this process, writing what it emits to ``result`` as it goes."""
    emitted: dict[str, Any] = {}

    def emit(value: dict[str, Any]) -> None:
        emitted.clear()
        emitted.update(value)
        _write_json(result, emitted)

    try:
        SECTION_FUNCTIONS[name](smoke, workdir, emit)
    except BaseException as exc:
        lines = traceback.format_exception(exc)
        emitted["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        emitted["traceback"] = "".join(lines)[-4000:]
        _write_json(result, emitted)
        print("".join(lines), file=sys.stderr)
        return 1
    _write_json(result, emitted)
    return 0


def check(
    *, smoke: bool, out: Path, sections: tuple[str, ...] = SECTIONS
) -> tuple[int, dict[str, Any]]:
    """Every section in order; the summary written to ``out/gpu_check.json`` after each one
    (a check killed from outside still leaves what it measured). Exit status 0 when all
    succeeded, 2 when skipped for want of a device (nothing written), else 1."""
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke (CPU, toy sizes)" if smoke else "cuda",
        "budget_s": sum(BUDGET_S[s] for s in sections) * (SMOKE_BUDGET_FACTOR if smoke else 1),
        "sections": list(sections),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        for name in sections:
            print(f"== {name}", flush=True)
            result = run_section(name, smoke=smoke, out=out, workdir=Path(folder))
            summary[name] = result
            state = "ok" if result["ok"] else f"FAILED: {str(result['error'])[:300]}"
            print(f"   {result['seconds']} s, {state}", flush=True)
            if name == "device" and result["ok"] and not smoke and not result["cuda_available"]:
                (out / "device.log").unlink(missing_ok=True)  # a skip leaves nothing behind
                if not any(out.iterdir()):
                    out.rmdir()
                return 2, summary
            summary["seconds"] = round(time.monotonic() - started, 1)
            summary["failed"] = [s for s in sections if s in summary and not summary[s]["ok"]]
            summary["ok"] = not summary["failed"]
            _write_json(out / SUMMARY, summary)
    return (0 if summary["ok"] else 1), summary


def main(argv: list[str] | None = None) -> int:
    """The check, or (``--section``) one of its sections in this process."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every section on CPU at toy sizes")
    p.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or RESULTS), help="results folder"
    )
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="these sections only")
    p.add_argument("--section", choices=sorted(SECTION_FUNCTIONS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.section is not None:
        if a.result is None or a.workdir is None:
            p.error("--section needs --result and --workdir")
        return section_main(a.section, smoke=a.smoke, result=a.result, workdir=a.workdir)
    sections = tuple(s for s in SECTIONS if a.only is None or s in a.only)
    if "device" not in sections:
        sections = ("device", *sections)
    code, summary = check(smoke=a.smoke, out=a.out, sections=sections)
    if code == 2:
        print(f"{SKIPPED} (--smoke checks the script on CPU)")
        return 0
    print(f"wrote {a.out / SUMMARY}: {'ok' if summary['ok'] else 'failed: '}"
          f"{', '.join(summary['failed'])}")  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
