"""A job's peak RSS on a 1 GB corpus against a 10 MB one: the data never lives in memory.

Each job runs in a child process of its own (peak RSS from ``os.wait4``): the same small
depth-pruning job (a ~0.6M-parameter Llama with a 4,096-token BPE, 32 optimizer steps of
8 x 128 tokens, 3 checkpoints, the default 128-sequence held-out set), on

- **raw text**: the .txt corpus itself, with a cold token cache, so the job tokenises it first
  (into ``ARTIFACT_ROOT/_token-cache``) and then trains from the memory map;
- **a tokenised directory**: the corpus tokenised beforehand (as ``p2law tokenize`` does;
  ``tokenize_bench.py`` leaves the 1 GB one behind), so the job only reads shards.

For context, the in-memory split the pipeline used before (``data.make_splits``: every document
and an int64 copy of every token in memory) is measured alone on a smaller corpus.

    python benchmarks/dataset_rss_bench.py [--small-mb 10] [--big-mb 1000] [--before-mb 100]

Writes benchmarks/results/dataset_rss_bench.json. Goal: peak RSS on 1 GB / on 10 MB <= 1.2.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_data import MB, WORK, corpus, machine, model_dir, run_measured

RESULTS = Path(__file__).parent / "results" / "dataset_rss_bench.json"
SEQ, BATCH, STEPS = 128, 8, 32


class _Hooks:
    """Job hooks that only keep the checkpoints."""

    def __init__(self) -> None:
        self.points: list[Any] = []

    def on_measured(self, measured: Any) -> None:
        self.measured = measured

    def on_resume(self, tokens_done: int, points: list[Any]) -> None:
        pass

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        pass

    def on_checkpoint(self, point: Any, points: list[Any]) -> tuple[Any, str | None]:
        from workers.ml.job import Decision

        self.points.append(point)
        return Decision.CONTINUE, None


def _child_job(dataset: Path, work: Path) -> dict[str, Any]:
    """Run one job (this process is the measured child)."""
    import torch

    from app.core.paths import JobPaths
    from app.schemas.jobs import JobRequest
    from workers.ml.job import JobSpec
    from workers.ml.pipeline import prune_and_post_train

    torch.set_num_threads(1)
    model = model_dir()
    request = JobRequest.model_validate(
        {
            "model": str(model),
            "method": "depth",
            "rho": 0.1,
            "tokens": STEPS * BATCH * SEQ,
            "dataset": {"path": str(dataset)},
            "checkpoints": 3,
            "seq_len": SEQ,
            "batch_size": BATCH,
            "device": "cpu",
        }
    )
    spec = JobSpec.build(request, JobPaths(str(model), dataset, None), cuda=False)
    hooks = _Hooks()
    started = time.monotonic()
    out = prune_and_post_train(
        spec, workdir=work / "job", artifact_dir=work / "artifact", hooks=hooks
    )
    return {
        "status": out.status,
        "seconds": round(time.monotonic() - started, 1),
        "protocol": out.measured.protocol,
        "l0": round(out.measured.l0, 4),
        "losses": [round(p.loss, 4) for p in out.points],
    }


def _child_before(source: Path) -> dict[str, Any]:
    """The in-memory split the pipeline made before shards (this process is the child)."""
    from transformers import AutoTokenizer

    from workers.ml import data

    tok = AutoTokenizer.from_pretrained(model_dir())
    started = time.monotonic()
    splits = data.make_splits(source, tok, SEQ)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "protocol": splits.protocol,
        "train_tokens": int(splits.train.numel()),
    }


def _measure(args: list[str], artifact_root: Path) -> dict[str, Any]:
    run = run_measured([sys.executable, __file__, *args], env={"ARTIFACT_ROOT": str(artifact_root)})
    if run["returncode"] != 0:
        raise SystemExit(f"child {args} failed: {run['stderr']}")
    return {**json.loads(run["stdout"].strip().splitlines()[-1]), **run, "stdout": None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=1000)
    parser.add_argument("--before-mb", type=int, default=100, help="0: skip")
    parser.add_argument("--keep", action="store_true", help="keep the corpora, outputs, caches")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child-job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-before", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_job is not None:
        print(json.dumps(_child_job(args.child_job, args.work)))
        return {}
    if args.child_before is not None:
        print(json.dumps(_child_before(args.child_before)))
        return {}

    from transformers import AutoTokenizer

    from app.core.tokens import tokenizer_fingerprint
    from workers.ml.tokens.write import tokenize_to_dir

    model = model_dir()
    tok = AutoTokenizer.from_pretrained(model)
    cases: dict[str, dict[str, Any]] = {}
    for size in (args.small_mb, args.big_mb):
        source = corpus(size)
        tokenised = WORK / f"tokenized-{size}mb"  # tokenize_bench.py's name: reused when there
        tokenize_to_dir(
            source,
            tokenised,
            tok,
            tokenizer_fingerprint=tokenizer_fingerprint(model),
            tokenizer_model=str(model),
        )
        for kind, dataset in (("raw", source), ("tokenised", tokenised)):
            work = WORK / f"rss-{kind}-{size}mb"
            shutil.rmtree(work, ignore_errors=True)  # a cold token cache for raw text
            result = _measure(
                ["--child-job", str(dataset), "--work", str(work)], artifact_root=work
            )
            result["corpus_mb"] = round(source.stat().st_size / MB, 1)
            cases[f"{kind}_{size}mb"] = result
            print(f"{kind} {size} MB: {result['peak_rss_mb']} MB peak RSS, {result['wall_s']} s")
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    before = None
    if args.before_mb:
        source = corpus(args.before_mb)
        before = _measure(["--child-before", str(source)], artifact_root=WORK / "rss-before")
        before["corpus_mb"] = round(source.stat().st_size / MB, 1)
        print(f"in-memory make_splits {args.before_mb} MB: {before['peak_rss_mb']} MB")

    def ratio(kind: str) -> float:
        big = cases[f"{kind}_{args.big_mb}mb"]["peak_rss_mb"]
        return round(big / cases[f"{kind}_{args.small_mb}mb"]["peak_rss_mb"], 3)

    result = {
        "machine": machine(),
        "job": {
            "model": "Llama, hidden 64, 4 layers, vocab 4096",
            "method": "depth",
            "steps": STEPS,
            "batch": [BATCH, SEQ],
        },
        "cases": cases,
        "ratio_raw": ratio("raw"),
        "ratio_tokenised": ratio("tokenised"),
        "goal": 1.2,
        "before_in_memory_make_splits": before,
    }
    result["meets_goal"] = max(result["ratio_raw"], result["ratio_tokenised"]) <= 1.2
    if not args.keep:  # the corpora and token directories of both benchmarks: gigabytes in /tmp
        shutil.rmtree(WORK, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_raw", "ratio_tokenised", "meets_goal")}))
    return result


if __name__ == "__main__":
    main()
