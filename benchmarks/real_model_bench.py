"""The real model (SmolLM2-135M, `make real-model`) on this machine: load, generate, loss, training.

    python benchmarks/real_model_bench.py [--model var/models/smollm2-135m] [--threads 2]

Measures, in one process:
- load: seconds to read the converted directory with ``load_causal_lm`` (what a job does);
- generate: greedy continuation of ``def fibonacci(n):`` (64 new tokens), its text and speed;
- loss: mean token cross-entropy (nats) on CPython standard-library source
  (``workers.ml.corpus.default_documents``: the same text `make demo-model` trains on), on
  blocks spread evenly over the first 4 MB of it, at seq_len 256 and 64 (a job's held-out loss
  is this measurement on its own blocks), with the standard error over blocks;
- train: post-training throughput of ``workers.ml.train.Trainer`` (AdamW, float32) at batch 4 ×
  seq_len 64, the shape the suite's real-model jobs use, after two warm-up steps.

Writes benchmarks/results/real_model_bench.json. Needs the converted model (`make real-model`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Runnable as a script from anywhere: the repository root holds the `workers` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.ml.corpus import default_documents
from workers.ml.data import pack, tokenize_documents
from workers.ml.evaluate import eval_loss
from workers.ml.models import count_parameters, load_causal_lm
from workers.ml.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results" / "real_model_bench.json"
PROMPT = "def fibonacci(n):"


def spread(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` blocks evenly spaced over ``blocks`` (all of them when there are fewer)."""
    if blocks.shape[0] <= n:
        return blocks
    index = torch.linspace(0, blocks.shape[0] - 1, n).round().long()
    return blocks[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("var/models/smollm2-135m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus-bytes", type=int, default=4_000_000)
    parser.add_argument("--eval-blocks", type=int, default=32, help="blocks per seq_len")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "model": str(args.model),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        # Other processes on the same cores slow every number but the losses down.
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }

    started = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model)
    out["load_s"] = round(time.perf_counter() - started, 2)
    out["parameters"] = count_parameters(model)
    print(f"load: {out['load_s']} s, {out['parameters']:,} parameters", flush=True)

    encoded = tokenizer(PROMPT, return_tensors="pt")
    started = time.perf_counter()
    with torch.inference_mode():
        generated = model.generate(**encoded, max_new_tokens=64, do_sample=False)
    seconds = time.perf_counter() - started
    new = int(generated.shape[1] - encoded["input_ids"].shape[1])
    out["generate"] = {
        "prompt": PROMPT,
        "text": tokenizer.decode(generated[0], skip_special_tokens=True),
        "new_tokens": new,
        "tokens_per_s": round(new / seconds, 1),
    }
    print(f"generate ({out['generate']['tokens_per_s']} tokens/s):\n{out['generate']['text']}\n")

    docs = default_documents(max_bytes=args.corpus_bytes)
    ids = tokenize_documents(docs, tokenizer)
    out["corpus"] = {"bytes": args.corpus_bytes, "documents": len(docs), "tokens": ids.numel()}
    out["loss"] = {}
    for seq_len in (256, 64):
        blocks = spread(pack(ids, seq_len), args.eval_blocks)
        started = time.perf_counter()
        loss, stderr = eval_loss(model, blocks, batch_size=8)
        out["loss"][f"seq{seq_len}"] = {
            "nats": round(loss, 4),
            "stderr": round(stderr, 4),
            "tokens": blocks.numel(),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"loss seq_len {seq_len}: {loss:.3f} ± {stderr:.3f} nats", flush=True)

    seq_len, batch = 64, 4
    train_blocks = pack(ids, seq_len)
    cfg = TrainConfig(lr=1e-5, total_steps=args.train_steps + 2, batch_size=batch)
    trainer = Trainer(model, train_blocks, cfg)
    trainer.train_until(2)  # warm-up: the optimizer state is allocated on the first step
    started = time.perf_counter()
    trainer.train_until(2 + args.train_steps)
    seconds = time.perf_counter() - started
    out["train"] = {
        "batch_size": batch,
        "seq_len": seq_len,
        "steps": args.train_steps,
        "tokens_per_s": round(args.train_steps * batch * seq_len / seconds, 1),
        "seconds_per_step": round(seconds / args.train_steps, 2),
    }
    print(f"train: {out['train']['tokens_per_s']} tokens/s", flush=True)
    out["load_average_at_end"] = round(os.getloadavg()[0], 2)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
