"""Post-training throughput and MFU on a CUDA device, with the job's own training loop.

Each model is trained for ``--warmup`` + ``--steps`` optimizer steps by
``workers.ml.train.Trainer`` exactly as a job runs it on a GPU: fp32 parameters (the master
weights), ``torch.autocast(bf16)``, fused AdamW, random token blocks of ``--seq-len`` tokens.
Tokens/s is measured over the steps after the warm-up, between two ``torch.cuda.synchronize``.

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
(:data:`PEAK_BF16_DENSE_TFLOPS`) or given with ``--peak-tflops``.

The peak memory the allocator saw (``torch.cuda.max_memory_allocated``) is reported beside the
estimate of ``benchmarks/memory_model.py`` for the same setup (the Trainer, one device).

    python benchmarks/gpu_train_bench.py [--models smollm2-135m llama-3.2-1b] [--steps 30]
    python benchmarks/gpu_train_bench.py --dry-run          # anywhere: tiny model, CPU, 2 steps

Writes benchmarks/results/gpu/gpu_train_bench.json (``--out``). Without CUDA (and without
``--dry-run``) it prints ``no CUDA device: skipped`` and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

# Runnable as a script from anywhere: the repository root holds `workers` and `benchmarks`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.memory_model import GIB, SHAPES, ModelShape, Setup, estimate
from workers.ml.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu" / "gpu_train_bench.json"
SKIPPED = "no CUDA device: skipped"

#: Peak dense (no sparsity) bf16 tensor-core TFLOP/s by device name, from NVIDIA's datasheets;
#: the first pattern that matches ``torch.cuda.get_device_name()`` wins, so the more specific
#: names come first.
PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH1[02]0\b.*\bNVL\b", 835.0),
    (r"\bGH200\b", 989.0),
    (r"\bH200\b", 989.0),
    (r"\bH100\b", 989.0),  # SXM
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)

#: The tiny model of --dry-run.
TINY = ModelShape("tiny", 64, 2, 4, 2, 128, 512, tied=True)

#: Micro-batch per model (sequences of --seq-len tokens), within one 80 GB device.
DEFAULT_BATCH = {"smollm2-135m": 8, "llama-3.2-1b": 4, "tiny": 2}


def peak_bf16_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a device by its name, or None when it is not in the table."""
    for pattern, tflops in PEAK_BF16_DENSE_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops
    return None


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (N: matmul parameters) + 12·L·d·s (attention)."""
    return 6.0 * shape.matmul_params + 12.0 * shape.layers * shape.q_dim * seq_len


def shape_from_config(name: str, config: dict[str, Any]) -> ModelShape:
    """A :class:`ModelShape` from a Hugging Face ``config.json`` mapping."""
    heads = int(config["num_attention_heads"])
    return ModelShape(
        name,
        hidden=int(config["hidden_size"]),
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        intermediate=int(config["intermediate_size"]),
        vocab=int(config["vocab_size"]),
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=config.get("model_type") == "qwen2",
        head_dim_=config.get("head_dim"),
        model_type=str(config.get("model_type", "llama")),
    )


def random_llama(shape: ModelShape, *, seq_len: int, device: torch.device) -> nn.Module:
    """A randomly initialised fp32 Llama of that shape, built on the device."""
    cfg = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        head_dim=shape.head_dim,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=max(seq_len, 2048),
    )
    torch.manual_seed(0)
    with device:
        return LlamaForCausalLM(cfg)


def build(
    name: str, *, model_root: Path, seq_len: int, device: torch.device
) -> tuple[nn.Module, ModelShape, str]:
    """The model, its shape and where its weights come from."""
    if name == "tiny":
        return random_llama(TINY, seq_len=seq_len, device=device), TINY, "random (tiny)"
    if name == "llama-3.2-1b":
        shape = SHAPES["Llama-3.2-1B"]
        return (
            random_llama(shape, seq_len=seq_len, device=device),
            shape,
            "random (published shape)",
        )
    if name == "smollm2-135m":
        local = model_root / "smollm2-135m"
        if (local / "config.json").is_file():
            shape = shape_from_config(
                "SmolLM2-135M", json.loads((local / "config.json").read_text())
            )
            model = AutoModelForCausalLM.from_pretrained(
                str(local), dtype=torch.float32, local_files_only=True
            )
            nn.Module.to(model, device)
            return model, shape, f"weights from {local}"
        shape = SHAPES["SmolLM2-135M"]
        return (
            random_llama(shape, seq_len=seq_len, device=device),
            shape,
            "random (published shape)",
        )
    raise ValueError(f"unknown model {name!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: nn.Module,
    shape: ModelShape,
    *,
    device: torch.device,
    seq_len: int,
    batch_size: int,
    steps: int,
    warmup: int,
    peak_tflops: float | None,
) -> dict[str, Any]:
    """Train `warmup` + `steps` steps with the job's Trainer; time the last `steps`."""
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, shape.vocab, (max(64, 4 * batch_size), seq_len), generator=gen)
    cfg = TrainConfig(lr=1e-4, warmup_steps=0, total_steps=10**9, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(model, blocks, cfg, device=device, autocast_dtype=autocast_dtype)
    trainer.train_until(warmup)
    trainer.pop_train_loss()
    _sync(device)
    t0 = time.perf_counter()
    trainer.train_until(warmup + steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    tokens = steps * batch_size * seq_len
    tps = tokens / seconds
    fpt = flops_per_token(shape, seq_len)
    predicted = estimate(shape, Setup(1, seq_len, batch_size, False, fsdp=False)).total
    result: dict[str, Any] = {
        "n_params": shape.n_params,
        "matmul_params": shape.matmul_params,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "steps": steps,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tps, 1),
        "flops_per_token": fpt,
        "achieved_tflops": round(fpt * tps / 1e12, 3),
        "mfu": round(fpt * tps / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "train_loss": round(trainer.pop_train_loss(), 4),
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "predicted_peak_gib": round(predicted / GIB, 2),
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
) -> dict[str, Any]:
    """Build one model and measure it; an out-of-memory error is recorded, not raised."""
    entry: dict[str, Any] = {"model": name}
    try:
        model, shape, source = build(name, model_root=model_root, seq_len=seq_len, device=device)
        entry["weights"] = source
        entry.update(
            measure(
                model,
                shape,
                device=device,
                seq_len=seq_len,
                batch_size=batch_size,
                steps=steps,
                warmup=warmup,
                peak_tflops=peak_tflops,
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
    return (
        f"{entry['model']}: {entry['tokens_per_s']:,.0f} tokens/s, "
        f"{entry['achieved_tflops']:.1f} TFLOP/s, MFU {'n/a' if mfu is None else f'{mfu:.1%}'}, "
        f"peak {entry.get('peak_allocated_gib', 'n/a')} GiB allocated "
        f"(estimated {entry['predicted_peak_gib']} GiB)"
    )


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
    p.add_argument("--peak-tflops", type=float, help="override the device's peak dense bf16")
    p.add_argument(
        "--model-root", type=Path, default=Path(os.environ.get("MODEL_ROOT") or ROOT / "var/models")
    )
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, the tiny model, 2 steps: checks the script"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    if a.dry_run:
        device = torch.device("cpu")
        models, seq_len, steps, warmup = ["tiny"], 32, 2, 1
    elif not torch.cuda.is_available():
        print(f"{SKIPPED} (torch {torch.__version__}; --dry-run checks the script on CPU)")
        return 0
    else:
        device = torch.device("cuda")
        models, seq_len, steps, warmup = a.models, a.seq_len, a.steps, a.warmup
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = a.peak_tflops or (peak_bf16_tflops(name) if device.type == "cuda" else None)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": name or platform.machine(),
        "dry_run": a.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_dense_tflops": peak,
        "peak_source": "--peak-tflops" if a.peak_tflops else ("lookup" if peak else None),
        "flops_formula": "6*N + 12*L*d*s per token (PaLM appendix B); N: matmul parameters",
        "results": [],
    }
    if device.type == "cuda" and peak is None:
        print(f"unknown peak for {name!r}: MFU not computed (give --peak-tflops)")
    for model_name in models:
        batch = a.batch_size or DEFAULT_BATCH[model_name]
        entry = run_one(
            model_name,
            model_root=a.model_root,
            device=device,
            seq_len=seq_len,
            batch_size=batch,
            steps=steps,
            warmup=warmup,
            peak_tflops=peak,
        )
        report["results"].append(entry)
        print(describe(entry))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
