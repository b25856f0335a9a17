"""What the tokeniser's tests share: tokenising with the tests' settings, reading a stream back,
running Python in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from app.core import tokens as core
from workers.ml.tokens.encode import Encoder
from workers.ml.tokens.read import TokenStore
from workers.ml.tokens.write import tokenize_to_dir

ROOT = Path(__file__).resolve().parents[4]
#: The settings of every test run unless it says otherwise (a child process repeats them).
TEST_FINGERPRINT = "tok1:test"
TEST_SHARD_TOKENS = 4096


def tokenize(
    source: Path, out: Path, tok: PreTrainedTokenizerBase | Encoder, **options: Any
) -> core.Manifest:
    """``tokenize_to_dir`` with the tests' fingerprint and small shards."""
    fields: dict[str, Any] = {
        "tokenizer_fingerprint": TEST_FINGERPRINT,
        "shard_tokens": TEST_SHARD_TOKENS,
    }
    fields.update(options)
    return tokenize_to_dir(source, out, tok, **fields)


def stream(manifest: core.Manifest) -> Any:
    """The whole token stream as int64."""
    return TokenStore(manifest).read(0, manifest.n_tokens)


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python ARGS…`` in a child process that imports this repository."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    )
