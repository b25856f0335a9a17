"""Shared inputs of the tokenised-dataset benchmarks (tokenize_bench.py, dataset_rss_bench.py).

Corpora are the standard library's sources (``workers.ml.corpus``) repeated to the size asked
for, written under ``P2LAW_BENCH_DIR`` (default ``/tmp/p2law-bench``; never in the repository).
The tokenizer is a 4,096-token byte-level BPE trained as the tests train theirs
(``workers.ml.make_model.train_tokenizer``), saved with a small Llama as a model directory.
Everything is reused when it is already there, so the second benchmark does not rebuild what the
first one built.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.ml.corpus import default_documents  # noqa: E402
from workers.ml.data import DOC_SEPARATOR  # noqa: E402

WORK = Path(os.environ.get("P2LAW_BENCH_DIR", "/tmp/p2law-bench"))
VOCAB = 4096
MB = 1_000_000


def corpus(megabytes: int) -> Path:
    """A .txt corpus of at least ``megabytes`` MB: the stdlib documents, repeated, separated."""
    path = WORK / f"corpus-{megabytes}mb.txt"
    target = megabytes * MB
    if path.is_file() and path.stat().st_size >= target:
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    docs = default_documents()
    tmp = path.with_suffix(".tmp")
    size = 0
    with tmp.open("w", encoding="utf-8") as fh:  # written as it goes: never 1 GB in memory
        while size < target:
            for doc in docs:
                if size:
                    fh.write(DOC_SEPARATOR)
                fh.write(doc)
                size += len(doc.encode("utf-8")) + 1
                if size >= target:
                    break
    tmp.replace(path)
    return path


def model_dir() -> Path:
    """A model directory: the benchmark's BPE tokenizer and a ~0.6M-parameter Llama."""
    path = WORK / f"model-bpe{VOCAB}"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.ml.make_model import train_tokenizer

    tok = train_tokenizer(default_documents(4 * MB), VOCAB)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def machine() -> dict[str, Any]:
    """Machine, versions, date and load, recorded with every result."""
    import numpy
    import tokenizers

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


#: Forks and execs the measured command from a small process of its own and reports its rusage.
#: Measured straight from the benchmark's process, a child would report that process's peak RSS:
#: Linux carries the high-water mark of the memory a process execs from (with vfork, the
#: parent's own) into the child's ``ru_maxrss``.
_LAUNCHER = """
import json, os, sys
report, command = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as fh:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, fh)
"""


def run_measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` as a child process; its wall time, exit status, output and peak RSS.

    The peak is the child's own ``ru_maxrss`` (the high-water mark of its resident set, the
    file-backed pages it mapped included), taken with ``os.wait4`` by a small launcher process
    so that nothing of the benchmark's own memory is counted.
    """
    import subprocess
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *command],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        )
        usage = json.loads(report.read_text()) if report.exists() else {}
    return {
        "returncode": usage.get("returncode", done.returncode),
        "wall_s": round(time.monotonic() - started, 2),
        "peak_rss_mb": round(usage.get("maxrss_kb", 0) * 1024 / MB, 1),
        "stdout": done.stdout,
        "stderr": done.stderr[-4000:],
    }
