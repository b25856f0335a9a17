"""`p2law tokenize`: throughput against the tokenizers library's own batch encode, and peak RSS.

1. Throughput, in one process, interleaved: ``tokenize_to_dir`` (read the .txt as a stream,
   encode, append EOS, write shards, offsets and the manifest) against the tokenizers library's
   ``encode_batch_fast`` over the same documents already in memory (reading them is not timed),
   in batches of 1 MiB (as ``tokenize_to_dir``'s) and of 16 MiB of characters; the ratio is
   taken against the faster one.
   The tokenizer is loaded once, outside the timings, for both.
2. Peak RSS and wall time of the whole command, ``python -m app.cli tokenize`` (what
   ``p2law tokenize`` runs), as a child process on a 1 GB corpus.

    python benchmarks/tokenize_bench.py [--throughput-mb 60] [--rss-mb 1000] [--repeats 4]

Writes benchmarks/results/tokenize_bench.json. Goals: throughput >= 0.8x the library's batch
encode; peak RSS <= 1 GB on a 1 GB corpus. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_data import MB, WORK, corpus, machine, model_dir, run_measured

RESULTS = Path(__file__).parent / "results" / "tokenize_bench.json"


def _char_batches(docs: list[str], chars: int) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for doc in docs:
        batches[-1].append(doc)
        size += len(doc)
        if size >= chars:
            batches.append([])
            size = 0
    return [b for b in batches if b]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--throughput-mb", type=int, default=60)
    parser.add_argument("--rss-mb", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the corpora and outputs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from app.core.tokens import read_manifest, tokenizer_fingerprint
    from workers.ml import data
    from workers.ml.tokens.encode import BATCH_CHARS
    from workers.ml.tokens.write import tokenize_to_dir

    model = model_dir()
    tok = AutoTokenizer.from_pretrained(model)
    fp = tokenizer_fingerprint(model)
    backend = tok.backend_tokenizer
    small = corpus(args.throughput_mb)
    text_bytes = small.stat().st_size
    docs = data.read_documents(small)
    batches = {
        "1MiB": _char_batches(docs, BATCH_CHARS),
        "16MiB": _char_batches(docs, 16 * BATCH_CHARS),
    }
    out_dir = WORK / "tokenize-bench-out"

    def library(batch_set: list[list[str]]) -> tuple[float, float, int]:
        started, cpu = time.perf_counter(), time.process_time()
        n = 0
        for batch in batch_set:
            n += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
        return time.perf_counter() - started, time.process_time() - cpu, n

    def ours() -> tuple[float, float, int]:
        shutil.rmtree(out_dir, ignore_errors=True)
        started, cpu = time.perf_counter(), time.process_time()
        manifest = tokenize_to_dir(small, out_dir, tok, tokenizer_fingerprint=fp)
        return time.perf_counter() - started, time.process_time() - cpu, manifest.n_tokens

    library(batches["1MiB"][:2])  # warm-up: thread pool, allocator
    seconds: dict[str, list[float]] = {"p2law": [], "library_1MiB": [], "library_16MiB": []}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in seconds}
    tokens: dict[str, int] = {}
    for repeat in range(args.repeats):
        # Alternate the order so that a load change penalises no side systematically.
        runs = ["p2law", "library_1MiB", "library_16MiB"]
        for name in runs if repeat % 2 == 0 else runs[::-1]:
            if name == "p2law":
                dt, cpu, n = ours()
            else:
                dt, cpu, n = library(batches[name.split("_")[1]])
            seconds[name].append(round(dt, 2))
            cpu_seconds[name].append(round(cpu, 2))
            tokens[name] = n
            print(f"{name}: {dt:.1f} s ({cpu:.1f} s CPU), {text_bytes / MB / dt:.2f} MB/s")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    best_library = min(median["library_1MiB"], median["library_16MiB"])
    throughput = {
        "corpus_mb": round(text_bytes / MB, 1),
        "documents": len(docs),
        "tokens": tokens,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "mb_per_s_median": {k: round(text_bytes / MB / v, 3) for k, v in median.items()},
        # CPU time (all threads) is less sensitive than wall time to other processes' load.
        "cpu_ratio_to_library_1MiB": round(
            statistics.median(cpu_seconds["library_1MiB"])
            / statistics.median(cpu_seconds["p2law"]),
            3,
        ),
        "ratio_to_best_library": round(best_library / median["p2law"], 3),
        "ratio_to_library_1MiB": round(median["library_1MiB"] / median["p2law"], 3),
        "goal": 0.8,
    }
    throughput["meets_goal"] = throughput["ratio_to_best_library"] >= 0.8
    del docs, batches

    big = corpus(args.rss_mb)
    rss_out = WORK / f"tokenized-{args.rss_mb}mb"
    shutil.rmtree(rss_out, ignore_errors=True)
    data_root, name = rss_out.parent, rss_out.name
    command = [sys.executable, "-m", "app.cli", "tokenize", str(big), "--model", str(model)]
    run = run_measured([*command, "--name", name], env={"DATA_ROOT": str(data_root)})
    if run["returncode"] != 0:
        raise SystemExit(f"p2law tokenize failed: {run['stderr']}")
    written = read_manifest(rss_out)
    big_bytes = big.stat().st_size
    rss = {
        "corpus_mb": round(big_bytes / MB, 1),
        "command": "python -m app.cli tokenize CORPUS --model MODEL --name NAME",
        "wall_s": run["wall_s"],
        "mb_per_s": round(big_bytes / MB / run["wall_s"], 3),
        "tokens": written.n_tokens,
        "documents": written.n_documents,
        "shards": len(written.shards),
        "dtype": written.dtype,
        "peak_rss_mb": run["peak_rss_mb"],
        "goal_mb": 1000,
        "meets_goal": run["peak_rss_mb"] <= 1000,
        "output": run["stdout"].strip(),
    }
    result = {
        "machine": machine(),
        "tokenizer": {"kind": "byte-level BPE (train_tokenizer)", "vocab": len(tok)},
        "throughput": throughput,
        "rss_1gb": rss,
    }
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"throughput": throughput, "rss_1gb": rss}, indent=1))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
