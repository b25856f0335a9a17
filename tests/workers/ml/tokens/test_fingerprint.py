"""Fingerprints of a source and of a job's model's tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core import tokens as core
from tests.workers.ml.tokens.conftest import Assets
from workers.ml.data import DataError
from workers.ml.tokens.fingerprint import EDGE_BYTES, model_fingerprint, source_fingerprint


def test_a_source_fingerprint_changes_with_the_file_but_not_with_a_second_look(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"a" * (3 * EDGE_BYTES))
    first = source_fingerprint(path)
    assert first == source_fingerprint(path) and first["bytes"] == 3 * EDGE_BYTES
    assert first["fingerprint"].startswith("src1:") and len(first["fingerprint"]) == 5 + 32
    # Another file copied in with the same size and mtime: told apart by its last MiB.
    stat = path.stat()
    path.write_bytes(b"a" * (3 * EDGE_BYTES - 1) + b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_fingerprint(path)["fingerprint"] != first["fingerprint"]


def test_a_model_directory_has_the_fingerprint_the_api_computes(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, _corpus, tok = assets
    assert model_fingerprint(model_dir) == core.tokenizer_fingerprint(model_dir)
    # A hub id: the loaded tokenizer, saved, gives the same fingerprint.
    assert model_fingerprint("org/name", tok) == core.tokenizer_fingerprint(model_dir)
    with pytest.raises(DataError, match="cannot be fingerprinted"):
        model_fingerprint("org/name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tokenizer files"):
        model_fingerprint(tmp_path / "empty")
