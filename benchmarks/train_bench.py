"""Post-training throughput: the job's training loop vs a bare PyTorch loop.

Same model (two copies of one initialisation), same token blocks, same batch shape, same
AdamW, both clipping the gradient norm at 1 as a job does by default; measured in one process
after a warm-up, in interleaved repeats so that load from other processes hits both loops
alike. The job loop is `workers.ml.train.Trainer.train_until` with the job's recipe (wsd
schedule, clipping, the chunked loss, the batch loader) and the progress callback the pipeline
installs; the bare loop is forward with the model's own full-logit loss, backward,
clip_grad_norm_, AdamW step, zero_grad over a random permutation of the blocks.

    python benchmarks/train_bench.py [--device cuda] [--repeats 30] [--steps 5]

Then, on the CPU, the peak memory of one forward + backward of the loss alone, in a fresh
process each (the high-water mark of its resident set): the model's own loss on the full
logits against the job's chunked loss (`workers.ml.evaluate.causal_lm_loss`), on a 2-layer Llama
with a 65,536-token vocabulary and 4 x 1,024 tokens (`--no-loss-memory` skips it).

Writes benchmarks/results/train_bench.json. Target: job / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Runnable as a script from anywhere: the repository root holds the `workers` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.ml.evaluate import autocast_context, causal_lm_loss
from workers.ml.train import TrainConfig, Trainer, describe_schedule

RESULTS = Path(__file__).parent / "results" / "train_bench.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(vocab: int, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    """A Llama of ~1M parameters at the defaults (vocab 2048, hidden 128, 4 layers)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg)


class BareLoop:
    """The reference: what anyone would write by hand."""

    def __init__(
        self,
        model: torch.nn.Module,
        blocks: torch.Tensor,
        *,
        batch_size: int,
        lr: float,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.model, self.device, self.autocast_dtype = model, device, autocast_dtype
        self.blocks = blocks.to(device)
        self.batch_size = batch_size
        fused = True if device.type == "cuda" else None
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=fused
        )
        self.perm = torch.randperm(blocks.shape[0], device=device)
        self.cursor = 0
        model.train()

    def run(self, steps: int) -> None:
        """`steps` optimizer steps."""
        model, opt, bs = self.model, self.opt, self.batch_size
        for _ in range(steps):
            if self.cursor + bs > self.perm.numel():
                self.perm = torch.randperm(self.blocks.shape[0], device=self.device)
                self.cursor = 0
            batch = self.blocks[self.perm[self.cursor : self.cursor + bs]]
            self.cursor += bs
            with autocast_context(self.device, self.autocast_dtype):
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)


#: The loss-memory probe: a large vocabulary, enough tokens for four chunks of the loss.
MEMORY_VOCAB, MEMORY_BATCH, MEMORY_SEQ = 65_536, 4, 1024


def loss_peak(kind: str) -> dict[str, float]:
    """One forward + backward of the loss alone (after one untimed), in this process: the peak
    resident set (MiB), the seconds of the second one and its loss."""
    torch.set_num_threads(1)
    model = build_model(MEMORY_VOCAB, 128, 2, seed=0)
    ids = torch.randint(0, MEMORY_VOCAB, (MEMORY_BATCH, MEMORY_SEQ))

    def step() -> float:
        if kind == "full":
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        else:
            loss = causal_lm_loss(model, ids)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()
    t0 = time.perf_counter()
    value = step()
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mib": round(peak_mib), "seconds": round(seconds, 2), "loss": value}


def loss_memory() -> dict[str, Any]:
    """`loss_peak` of the full-logit and the chunked loss, each in a fresh process."""
    out: dict[str, Any] = {
        "vocab": MEMORY_VOCAB,
        "tokens": MEMORY_BATCH * MEMORY_SEQ,
        "fp32_logits_mib": MEMORY_VOCAB * MEMORY_BATCH * MEMORY_SEQ * 4 / 2**20,
    }
    for kind in ("full", "chunked"):
        run = subprocess.run(
            [sys.executable, __file__, "--loss-peak-of", kind],
            check=True,
            capture_output=True,
            text=True,
        )
        out[kind] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loss-peak-of", choices=["full", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--no-loss-memory", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    # Many short interleaved repeats: on a shared machine the load changes within seconds,
    # and short pairs see the same load far more often than long ones.
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.loss_peak_of:
        peak = loss_peak(a.loss_peak_of)
        print(json.dumps(peak))
        return peak
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    base = build_model(a.vocab, a.hidden, a.layers, seed=0)
    n_params = sum(p.numel() for p in base.parameters())
    blocks = torch.randint(0, a.vocab, (512, a.seq_len), generator=torch.Generator().manual_seed(1))

    job_model = copy.deepcopy(base)
    bare_model = copy.deepcopy(base)
    torch.nn.Module.to(job_model, device)
    torch.nn.Module.to(bare_model, device)
    # The job's defaults (app/schemas/jobs.py): wsd (the bench stays in its stable phase),
    # the gradient norm clipped at 1.
    cfg = TrainConfig(
        lr=3e-4,
        schedule="wsd",
        warmup_steps=10,
        total_steps=10**9,
        decay_steps=2 * 10**8,
        batch_size=a.batch_size,
        grad_clip=1.0,
    )
    trainer = Trainer(job_model, blocks, cfg, device=device, autocast_dtype=autocast_dtype)
    progress_calls = 0

    def on_progress(step: int) -> None:  # what JobHooks.on_progress costs the loop: a call
        nonlocal progress_calls
        progress_calls += 1

    bare = BareLoop(
        bare_model,
        blocks,
        batch_size=a.batch_size,
        lr=3e-4,
        device=device,
        autocast_dtype=autocast_dtype,
    )

    def time_job() -> float:
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_until(trainer.step + a.steps, on_step=on_progress, every=10)
        _sync(device)
        return time.perf_counter() - t0

    def time_bare() -> float:
        _sync(device)
        t0 = time.perf_counter()
        bare.run(a.steps)
        _sync(device)
        return time.perf_counter() - t0

    trainer.train_until(a.warmup)
    bare.run(a.warmup)
    tokens = a.steps * a.batch_size * a.seq_len
    job_tps: list[float] = []
    bare_tps: list[float] = []
    for r in range(a.repeats):
        # Alternate which loop goes first so a load change penalises neither systematically.
        order = (time_job, time_bare) if r % 2 == 0 else (time_bare, time_job)
        for fn in order:
            seconds = fn()
            (job_tps if fn is time_job else bare_tps).append(tokens / seconds)
    paired = [j / b for j, b in zip(job_tps, bare_tps, strict=True)]
    result: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": {
            "arch": "llama",
            "n_params": n_params,
            "vocab": a.vocab,
            "hidden": a.hidden,
            "layers": a.layers,
        },
        "batch": {
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "tokens_per_step": a.batch_size * a.seq_len,
        },
        "job_recipe": describe_schedule(cfg) + f" grad_clip={cfg.grad_clip:g}",
        "steps_per_repeat": a.steps,
        "repeats": a.repeats,
        "job_tokens_per_s": [round(x, 1) for x in job_tps],
        "bare_tokens_per_s": [round(x, 1) for x in bare_tps],
        "job_median": round(statistics.median(job_tps), 1),
        "bare_median": round(statistics.median(bare_tps), 1),
        "ratio_of_medians": round(statistics.median(job_tps) / statistics.median(bare_tps), 4),
        "median_paired_ratio": round(statistics.median(paired), 4),
        # Total tokens over total seconds of each loop: the long-run throughput ratio.
        # Both loops train the same tokens, so it is bare seconds over job seconds.
        "ratio_of_totals": round(
            sum(tokens / t for t in bare_tps) / sum(tokens / t for t in job_tps), 4
        ),
        "target": 0.95,
    }
    result["meets_target"] = result["median_paired_ratio"] >= result["target"]
    if not a.no_loss_memory:
        result["loss_memory"] = loss_memory()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "job_median",
                    "bare_median",
                    "ratio_of_medians",
                    "median_paired_ratio",
                    "meets_target",
                    "loss_memory",
                )
                if k in result
            }
        )
    )
    return result


if __name__ == "__main__":
    main()
