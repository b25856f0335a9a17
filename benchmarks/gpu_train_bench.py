"""Post-training throughput and MFU on a CUDA device, with the job's own training loop.

Each model is trained for ``--warmup`` + ``--steps`` optimizer steps the way a one-device job
trains it (``workers/ml/pipeline.py``'s ``restore``): built on the meta device and placed by the
job's own strategy (``workers.ml.strategy.OneDevice``: ``configure_cuda``'s TF32, the dtype
and compile choice of the job's request, ``compile_blocks`` per decoder block), then trained by
``workers.ml.train.Trainer`` with the job's training config (``pipeline.train_config``: warm-up,
schedule, gradient clipping) — fp32 master weights, ``torch.autocast(bf16)``, fused AdamW, the
chunked loss — on random token blocks of ``--seq-len`` tokens. ``--compile`` measures eager,
compiled or both (the job's default on CUDA is compiled). Tokens/s is measured over the steps
after the warm-up (a compiled model compiles in its first step), between two
``torch.cuda.synchronize``.

Models:

- ``smollm2-135m``: SmolLM2-135M, with its weights when ``MODEL_ROOT/smollm2-135m`` holds the
  Hugging Face directory (``make real-model``), else randomly initialised from its published
  shape (throughput and memory do not depend on the weights);
- ``llama-3.2-1b``: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32/8 heads, vocab
  128,256), randomly initialised;
- ``tiny``: a 2-layer Llama for ``--dry-run`` (CPU, 2 steps), which checks the script only.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B):

    FLOPs per token = 6·N + 12·L·d·s
    MFU = FLOPs per token x tokens/s / peak dense bf16 FLOP/s of the device

N: parameters in matrix products (all of them, a tied embedding once; an untied input
embedding is a lookup and does not count); 6·N: forward 2·N + backward 4·N. 12·L·d·s: the
attention scores and their product with the values, forward and backward, L layers, d = heads
x head_dim, s = sequence length, over the whole s x s matrix (causal attention needs half of it;
like PaLM and most published MFU figures, the convention counts it whole). Recomputation is not
counted (this loop does none). The peak is looked up from the device name
(``app.core.flops.PEAK_BF16_DENSE_TFLOPS``) or given with ``--peak-tflops``.

The peak memory the allocator saw (``torch.cuda.max_memory_allocated``) is reported beside the
memory model's training peak for the same setup (``app.core.memory``, a one-device job).

    python benchmarks/gpu_train_bench.py [--models smollm2-135m llama-3.2-1b] [--steps 30]
    python benchmarks/gpu_train_bench.py --compile both    # eager, then compiled
    python benchmarks/gpu_train_bench.py --dry-run          # anywhere: tiny model, CPU, 2 steps

``benchmarks/gpu_check.py`` runs it as one section of the GPU check.

Writes benchmarks/results/gpu/gpu_train_bench.json (``--out``). Without CUDA (and without
``--dry-run``) it prints ``no CUDA device: skipped`` and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

# Runnable as a script from anywhere: the repository root holds `workers` and `benchmarks`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.core.flops import flops_per_token, peak_bf16_tflops
from app.core.memory import GIB, ModelShape, job_setup, training_peak
from app.schemas.jobs import JobRequest
from benchmarks.memory_model import SHAPES
from workers.ml import models
from workers.ml.job import JobSpec
from workers.ml.pipeline import enable_activation_checkpointing, train_config
from workers.ml.strategy import OneDevice
from workers.ml.train import Trainer, compile_blocks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu" / "gpu_train_bench.json"
SKIPPED = "no CUDA device: skipped"

#: The tiny model of --dry-run.
TINY = ModelShape("tiny", 64, 2, 4, 2, 128, 512, tied=True)

#: Micro-batch per model (sequences of --seq-len tokens), within one 80 GB device.
DEFAULT_BATCH = {"smollm2-135m": 8, "llama-3.2-1b": 4, "tiny": 2}

#: How a compiled run compiles: the job's inductor, or dynamo alone (``eager``: the blocks are
#: traced and run as captured graphs, no code generated) for a dry run on CPU, where inductor's
#: C++ build would cost more than the whole check.
CompileBackend = Literal["inductor", "eager"]


def hf_config(shape: ModelShape, *, seq_len: int) -> dict[str, Any]:
    """The ``config.json`` mapping of a shape, long enough for ``seq_len``."""
    return {**shape.hf_config(), "max_position_embeddings": max(seq_len, 2048)}


def bench_spec(
    *,
    device: torch.device,
    seq_len: int,
    batch_size: int,
    steps: int,
    compile: bool,
    checkpointing: bool = False,
) -> JobSpec:
    """The spec of a one-device job that trains such a model for ``steps`` steps: what the
    strategy and the training config are made from (the data and model paths are not read)."""
    request = JobRequest.model_validate(
        {
            "model": "benchmark",
            "method": "2:4",
            "rho": 0.2,
            "tokens": steps * batch_size * seq_len,
            "dataset": {"path": "unused"},
            "seq_len": seq_len,
            "batch_size": batch_size,
            "device": device.type,
            "compile": compile,
            "activation_checkpointing": checkpointing,
            "checkpoints": 2,
        }
    )
    dtype = "bfloat16" if device.type == "cuda" else "float32"  # the request's "auto"
    return JobSpec(
        request=request,
        model="benchmark",
        dataset=Path("unused"),
        eval_path=None,
        device="cuda" if device.type == "cuda" else "cpu",
        dtype=dtype,
    )


def init_weights(model: nn.Module, *, seed: int = 0) -> None:
    """Random values for a model placed with no values (norm gains 1, biases 0, the rest
    N(0, 0.02), as Llama initialises); its throughput and memory do not depend on them."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:
                param.fill_(1.0)
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(values.to(param.dtype))


def job_model(
    config: dict[str, Any],
    strategy: OneDevice,
    *,
    checkpointing: bool = False,
    compile_backend: CompileBackend = "inductor",
    weights: Path | None = None,
) -> PreTrainedModel:
    """A model of ``config`` placed as a job places it: built on the meta device, activation
    checkpointing enabled when asked, then ``strategy.parallelize`` (storage on the device and,
    when the strategy compiles, its blocks compiled by inductor); values from ``weights`` (a
    Hugging Face directory) or random. A strategy that does not compile gets its blocks compiled
    by ``compile_backend`` when that is not inductor (the dry run's stand-in)."""
    with models.parameters_on_meta():
        model = models.model_from_config(AutoConfig.for_model(**config))
    if checkpointing:
        enable_activation_checkpointing(model)
    strategy.parallelize(model)
    if compile_backend != "inductor":
        compile_blocks(model, backend=compile_backend)
    if weights is not None:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(weights), dtype=torch.float32, local_files_only=True
        )
        model.load_state_dict(loaded.state_dict())
    else:
        init_weights(model)
    return model


def model_config(
    name: str, *, model_root: Path, seq_len: int
) -> tuple[dict[str, Any], ModelShape, Path | None, str]:
    """The config of a benchmark model, its shape, the directory of its weights (None: random)
    and where its weights come from."""
    if name == "tiny":
        return hf_config(TINY, seq_len=seq_len), TINY, None, "random (tiny)"
    if name == "llama-3.2-1b":
        shape = SHAPES["Llama-3.2-1B"]
        return hf_config(shape, seq_len=seq_len), shape, None, "random (published shape)"
    if name == "smollm2-135m":
        local = model_root / "smollm2-135m"
        if (local / "config.json").is_file():
            config = json.loads((local / "config.json").read_text())
            shape = ModelShape.from_config(config, "SmolLM2-135M")
            return config, shape, local, f"weights from {local}"
        shape = SHAPES["SmolLM2-135M"]
        return hf_config(shape, seq_len=seq_len), shape, None, "random (published shape)"
    raise ValueError(f"unknown model {name!r}")


def build(
    name: str, *, model_root: Path, seq_len: int, device: torch.device
) -> tuple[nn.Module, ModelShape, str]:
    """The model (random values unless its weights are there), its shape and where its
    weights come from, placed on ``device`` as an eager one-device job places it."""
    config, shape, weights, source = model_config(name, model_root=model_root, seq_len=seq_len)
    spec = bench_spec(device=device, seq_len=seq_len, batch_size=1, steps=1, compile=False)
    return job_model(config, OneDevice(spec), weights=weights), shape, source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str,
    *,
    model_root: Path,
    device: torch.device,
    seq_len: int,
    batch_size: int,
    steps: int,
    warmup: int,
    peak_tflops: float | None,
    compiled: bool = False,
    compile_backend: CompileBackend = "inductor",
) -> dict[str, Any]:
    """Build the model as a job does and train `warmup` + `steps` steps with the job's Trainer
    and training config; time the last `steps`."""
    config, shape, weights, source = model_config(name, model_root=model_root, seq_len=seq_len)
    spec = bench_spec(
        device=device,
        seq_len=seq_len,
        batch_size=batch_size,
        steps=warmup + steps,
        compile=compiled and compile_backend == "inductor",
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    strategy = OneDevice(spec, device)
    model = job_model(
        config,
        strategy,
        compile_backend=compile_backend if compiled else "inductor",
        weights=weights,
    )
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, shape.vocab, (max(64, 4 * batch_size), seq_len), generator=gen)
    cfg = replace(train_config(spec), batch_size=strategy.per_device_batch(spec))
    trainer = Trainer(
        model,
        blocks,
        cfg,
        device=strategy.device,
        autocast_dtype=strategy.autocast_dtype,
        shard=strategy.data_shard,
    )
    t0 = time.perf_counter()
    trainer.train_until(warmup)
    trainer.pop_train_loss()
    _sync(device)
    warmup_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train_until(warmup + steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    tokens = steps * batch_size * seq_len
    tps = tokens / seconds
    fpt = flops_per_token(shape, seq_len)
    setup = job_setup(
        1,
        seq_len,
        batch_size,
        False,
        compute="bf16" if strategy.autocast_dtype is not None else "fp32",
        fused_optimizer=device.type == "cuda",
    )
    result: dict[str, Any] = {
        "model": name,
        "compiled": compiled,
        "compile_backend": compile_backend if compiled else None,
        "weights": source,
        "n_params": shape.n_params,
        "matmul_params": shape.matmul_params,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "dtype": spec.dtype,
        "warmup_steps": warmup,
        "warmup_seconds": round(warmup_seconds, 3),
        "steps": steps,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tps, 1),
        "flops_per_token": fpt,
        "achieved_tflops": round(fpt * tps / 1e12, 3),
        "mfu": round(fpt * tps / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "train_loss": round(trainer.pop_train_loss(), 4),
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "predicted_peak_gib": round(training_peak(shape, setup).total / GIB, 4),
    }
    if device.type == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
    return result


def run_one(
    name: str,
    *,
    model_root: Path,
    device: torch.device,
    seq_len: int,
    batch_size: int,
    steps: int,
    warmup: int,
    peak_tflops: float | None,
    compiled: bool = False,
    compile_backend: CompileBackend = "inductor",
) -> dict[str, Any]:
    """Build one model and measure it; an out-of-memory error is recorded, not raised."""
    entry: dict[str, Any] = {"model": name, "compiled": compiled}
    try:
        entry.update(
            measure(
                name,
                model_root=model_root,
                device=device,
                seq_len=seq_len,
                batch_size=batch_size,
                steps=steps,
                warmup=warmup,
                peak_tflops=peak_tflops,
                compiled=compiled,
                compile_backend=compile_backend,
            )
        )
    except torch.cuda.OutOfMemoryError as error:
        entry["error"] = f"out of memory at micro-batch {batch_size}: {str(error)[:200]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the model is gone with this frame; give its memory back
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One line for the console."""
    if "error" in entry:
        return f"{entry['model']}: {entry['error']}"
    mfu = entry["mfu"]
    mode = "compiled" if entry.get("compiled") else "eager"
    return (
        f"{entry['model']} ({mode}): {entry['tokens_per_s']:,.0f} tokens/s, "
        f"{entry['achieved_tflops']:.1f} TFLOP/s, MFU {'n/a' if mfu is None else f'{mfu:.1%}'}, "
        f"peak {entry.get('peak_allocated_gib', 'n/a')} GiB allocated "
        f"(estimated {entry['predicted_peak_gib']} GiB)"
    )


def device_name(device: torch.device) -> str:
    """The device's name as CUDA reports it, or the host's processor."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def bench(
    model_names: list[str],
    *,
    device: torch.device,
    seq_len: int,
    steps: int,
    warmup: int,
    compile_modes: tuple[bool, ...] = (False,),
    compile_backend: CompileBackend = "inductor",
    batch_size: int | None = None,
    peak_tflops: float | None = None,
    model_root: Path = ROOT / "var/models",
    on_entry: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every model in every compile mode (all eager runs first: a compiled run that
    outlasts a caller's time budget then costs only compiled results); ``on_entry`` sees the
    report after each run."""
    name = device_name(device)
    peak = peak_tflops or (peak_bf16_tflops(name) if device.type == "cuda" else None)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_dense_tflops": peak,
        "peak_source": "given" if peak_tflops else ("lookup" if peak else None),
        "flops_formula": "6*N + 12*L*d*s per token (PaLM appendix B); N: matmul parameters",
        "results": [],
    }
    if device.type == "cuda" and peak is None:
        print(f"unknown peak for {name!r}: MFU not computed (give --peak-tflops)")
    for compiled in compile_modes:
        for model_name in model_names:
            entry = run_one(
                model_name,
                model_root=model_root,
                device=device,
                seq_len=seq_len,
                batch_size=batch_size or DEFAULT_BATCH[model_name],
                steps=steps,
                warmup=warmup,
                peak_tflops=peak,
                compiled=compiled,
                compile_backend=compile_backend,
            )
            report["results"].append(entry)
            print(describe(entry), flush=True)
            if on_entry is not None:
                on_entry(report)
    return report


COMPILE_MODES = {"eager": (False,), "compiled": (True,), "both": (False, True)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 also when skipped for want of a CUDA device."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=["smollm2-135m", "llama-3.2-1b"],
        choices=["smollm2-135m", "llama-3.2-1b", "tiny"],
    )
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, help="default: per model (DEFAULT_BATCH)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument(
        "--compile",
        choices=sorted(COMPILE_MODES),
        default="eager",
        help="eager, compiled (the job's default on CUDA) or both",
    )
    p.add_argument("--peak-tflops", type=float, help="override the device's peak dense bf16")
    p.add_argument(
        "--model-root", type=Path, default=Path(os.environ.get("MODEL_ROOT") or ROOT / "var/models")
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, the tiny model, 2 steps (compiled by dynamo alone): checks the script",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    backend: CompileBackend = "inductor"
    if a.dry_run:
        device = torch.device("cpu")
        names, seq_len, steps, warmup, backend = ["tiny"], 32, 2, 1, "eager"
    elif not torch.cuda.is_available():
        print(f"{SKIPPED} (torch {torch.__version__}; --dry-run checks the script on CPU)")
        return 0
    else:
        device = torch.device("cuda")
        names, seq_len, steps, warmup = a.models, a.seq_len, a.steps, a.warmup
    report = bench(
        names,
        device=device,
        seq_len=seq_len,
        steps=steps,
        warmup=warmup,
        compile_modes=COMPILE_MODES[a.compile],
        compile_backend=backend,
        batch_size=a.batch_size,
        peak_tflops=a.peak_tflops,
        model_root=a.model_root,
    )
    report["dry_run"] = a.dry_run
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
