"""Fingerprints of what a token directory is made from: its source and its tokenizer.

The tokenizer fingerprint of a model directory is ``app.core.tokens.tokenizer_fingerprint``'s
(from the files alone, so the API computes the same one); a hub model's is taken from the loaded
tokenizer saved to a temporary directory.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TypedDict

from transformers import PreTrainedTokenizerBase

from app.core import tokens as core
from workers.ml.data import DataError, hf_arrow_files

#: Bytes of each end of a source file hashed into its fingerprint.
EDGE_BYTES = 1 << 20
#: The files of a saved HF dataset besides its Arrow files that the fingerprint covers.
_HF_METADATA = frozenset({"dataset_info.json", "state.json", "dataset_dict.json"})


class SourceFingerprint(TypedDict):
    """A source's fingerprint (``src1:`` + 32 hex digits) and its size in bytes."""

    fingerprint: str
    bytes: int


def source_fingerprint(path: Path) -> SourceFingerprint:
    """The source's fingerprint: ``{"fingerprint": "src1:<hex>", "bytes": total size}``.

    Size, modification time (ns) and a SHA-256 of the first and last MiB of every file (a saved
    HF dataset: of each of its files). A job looks the cache up with it at every start and every
    retry, so it must cost O(1) in the corpus size rather than a pass over it: size and mtime
    change with every ordinary write, and the edge hashes tell apart a different file copied in
    with its size and mtime kept, in the common cases (appended to, truncated, replaced). An
    edit in the middle that keeps both size and mtime goes unseen; that takes a deliberate
    ``touch -d``.
    """
    files = [path] if path.is_file() else _source_files(path)
    digest = hashlib.sha256()
    total = 0
    for file in files:
        st = file.stat()
        total += st.st_size
        digest.update(f"{file.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(EDGE_BYTES))
            if st.st_size > EDGE_BYTES:
                fh.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
                digest.update(fh.read(EDGE_BYTES))
    return {"fingerprint": "src1:" + digest.hexdigest()[:32], "bytes": total}


def _source_files(path: Path) -> list[Path]:
    extra = [p for p in sorted(path.iterdir()) if p.name in _HF_METADATA]
    return [*hf_arrow_files(path), *extra]


def model_fingerprint(model: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The tokenizer fingerprint of a job's model: of its directory's files, or, for a hub id,
    of the loaded ``tokenizer`` saved to a temporary directory."""
    path = Path(model)
    if path.is_dir():
        try:
            return core.tokenizer_fingerprint(path)
        except core.TokenizerFilesError as exc:
            raise DataError(str(exc)) from None
    if tokenizer is None:
        raise DataError(f"{model}: not a model directory; its tokenizer cannot be fingerprinted")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return core.tokenizer_fingerprint(Path(tmp))
