"""Post-training throughput: the job's training loop vs a bare PyTorch loop.

Same model (two copies of one initialisation), same token blocks, same batch shape, same
AdamW; measured in one process after a warm-up, in interleaved repeats so that load from
other processes hits both loops alike. The job loop is `workers.ml.train.Trainer.run` with
the progress callback the pipeline installs; the bare loop is forward, backward, AdamW step,
zero_grad over a random permutation of the blocks.

    python benchmarks/train_bench.py [--device cuda] [--repeats 30] [--steps 5]

Writes benchmarks/results/train_bench.json. Target: job / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Runnable as a script from anywhere: the repository root holds the `workers` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.ml.evaluate import autocast_context
from workers.ml.train import TrainConfig, Trainer

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
            opt.step()
            opt.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its figures."""
    p = argparse.ArgumentParser(description=__doc__)
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
    cfg = TrainConfig(lr=3e-4, warmup_steps=10, total_steps=10**9, batch_size=a.batch_size)
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
                )
            }
        )
    )
    return result


if __name__ == "__main__":
    main()
