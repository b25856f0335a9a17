"""Tokenised datasets: text tokenised once into memory-mapped token shards, and read back.

    python -m workers.ml.tokenized SOURCE --model MODEL_DIR --out DATA_ROOT/NAME

(``p2law tokenize SOURCE --model MODEL --name NAME`` runs this.) As nanoGPT, OLMo-core and
Megatron do, a corpus is tokenised once into flat arrays of token ids on disk, and training
reads its batches through a memory map, so neither tokenising nor training ever holds the
corpus in memory. The directory's layout and manifest are ``app/core/tokens.py``'s.

Writing (:func:`tokenize_to_dir`) streams the source's documents (``data.iter_pieces``: .txt,
JSONL, saved HF dataset) in batches of about ``batch_chars`` characters through the
tokenizers library's ``encode_batch_fast`` (its Rust threads run while this thread reads the
next batch and writes the last one), appends EOS after every document, and writes fixed-size
shards to temporary files renamed into place. After every complete shard ``progress.json``
records where the stream stands, so a killed run continues from its last complete shard;
``manifest.json`` is written last.

Reading (:class:`TokenStore`, :class:`MemmapBlocks`) gives a job its training blocks as a
``workers.ml.data.BlockSource``: a batch is copied out of the memory map into an int64 tensor
of the batch's size. :func:`job_splits` is the pipeline's entry point: a token directory is read
as it is (its manifest's held-out range is the evaluation set); raw text is tokenised once into
a cache directory keyed by the source's and the tokenizer's fingerprints, and split by the
raw-text rule, so its blocks and ``protocol`` are the ones ``data.make_splits`` gives.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from app.core import tokens as core
from workers.ml import data as data_mod
from workers.ml.data import DataError, Piece
from workers.ml.models import fsync_dir

PROGRESS = "progress.json"
LOCK = ".lock"
#: 64M tokens: 128 MiB uint16 shards, as large as OLMo's and Megatron's usual files and small
#: enough that a killed run loses little.
SHARD_TOKENS = 1 << 26
#: Characters per encode call: large enough that the tokenizer's threads share the work evenly
#: (on 2 cores 1 MiB encodes as fast as 4 MiB), small enough that what the tokenizer allocates
#: for a batch (about 100 bytes a character at its peak) stays near 100 MB.
BATCH_CHARS = 1 << 20
#: Batches encoding at once (see `_encoded`).
IN_FLIGHT = 2
#: Characters tokenised between two returns of freed memory to the system (`malloc_trim`).
TRIM_CHARS = 1 << 25
#: Held-out tokens of ``p2law tokenize`` unless asked otherwise: 2^20 (128 sequences of 8,192),
#: at most a tenth of the corpus.
HELDOUT_TOKENS = 1 << 20
#: Characters on each side of a cut inside a long document that the tokenizer checks.
_CUT_WINDOW = 4096
#: Bytes of each end of a source file hashed into its fingerprint.
_EDGE_BYTES = 1 << 20
_NP_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


class TokenizeInterruptedError(RuntimeError):
    """Raised by test hooks to stand for a run killed after a shard."""


# --------------------------------------------------------------------------- fingerprints


def source_fingerprint(path: Path) -> dict[str, Any]:
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
            digest.update(fh.read(_EDGE_BYTES))
            if st.st_size > _EDGE_BYTES:
                fh.seek(max(_EDGE_BYTES, st.st_size - _EDGE_BYTES))
                digest.update(fh.read(_EDGE_BYTES))
    return {"fingerprint": "src1:" + digest.hexdigest()[:32], "bytes": total}


def _source_files(path: Path) -> list[Path]:
    names = {"dataset_info.json", "state.json", "dataset_dict.json"}
    extra = [p for p in sorted(path.iterdir()) if p.name in names]
    return [*data_mod.hf_arrow_files(path), *extra]


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


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoder:
    """How documents become ids: ``encode(texts)`` without special tokens, then ``eos_id``."""

    encode: Callable[[list[str]], list[list[int]]]
    eos_id: int
    eos_token: str
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> Encoder:
        """The encoder of a transformers tokenizer: its Rust backend's ``encode_batch_fast``
        (the ids ``tokenizer(texts, add_special_tokens=False)`` gives, without computing
        offsets), or the tokenizer itself when it has no backend."""
        eos = tokenizer.eos_token_id
        if eos is None or not isinstance(tokenizer.eos_token, str):
            raise DataError("the tokenizer has no EOS token; documents cannot be separated")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:

            def encode(texts: list[str]) -> list[list[int]]:
                return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

            vocab = max(len(tokenizer), int(backend.get_vocab_size(with_added_tokens=True)))
        else:

            def encode(texts: list[str]) -> list[list[int]]:
                ids: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
                return ids

            vocab = len(tokenizer)
        return cls(encode, int(eos), tokenizer.eos_token, vocab)


@dataclass(frozen=True)
class _Unit:
    """Text encoded in one piece; ``start``/``end``: it begins/ends a document."""

    text: str
    start: bool
    end: bool


def _cut_is_safe(encoder: Encoder, left: str, right: str) -> bool:
    # The tokenizer's own verdict: around the cut, the two sides encoded apart give the ids of
    # the whole. A tokenizer that treats the start of a text specially (a prefix space, say)
    # fails it, and the pieces are then encoded together.
    a, b = left[-_CUT_WINDOW:], right[:_CUT_WINDOW]
    whole, first, second = encoder.encode([a + b, a, b])
    return whole == first + second


def _units(pieces: Iterable[Piece], encoder: Encoder) -> Iterator[_Unit]:
    """Documents, a long .txt document in pieces where its cuts are safe (else joined)."""
    held: str | None = None  # a piece of the current document, waiting for the next one
    started = False  # a unit of the current document went out already
    for piece in pieces:
        text = piece.text
        if held is not None:
            if _cut_is_safe(encoder, held, text):
                yield _Unit(held, not started, False)
                started = True
            else:
                text = held + text
            held = None
        if piece.end:
            yield _Unit(text, not started, True)
            started = False
        else:
            held = text


def _batches(units: Iterable[_Unit], batch_chars: int) -> Iterator[list[_Unit]]:
    batch: list[_Unit] = []
    size = 0
    for unit in units:
        batch.append(unit)
        size += len(unit.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded(
    units: Iterable[_Unit], encoder: Encoder, batch_chars: int
) -> Iterator[tuple[list[_Unit], list[list[int]]]]:
    """Batches of units with their ids, in order, with ``IN_FLIGHT`` batches encoding at once.

    The tokenizer releases the GIL while it encodes, so reading the source, converting ids and
    writing shards overlap with it instead of adding to it; and with a second batch already
    encoding, the tokenizer's threads that finish their share of one batch early take up the
    next instead of waiting for the last long document of the first.
    """
    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="encode") as pool:
        pending: deque[tuple[list[_Unit], Future[list[list[int]]]]] = deque()
        for batch in _batches(units, batch_chars):
            pending.append((batch, pool.submit(encoder.encode, [u.text for u in batch])))
            if len(pending) >= IN_FLIGHT:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


# --------------------------------------------------------------------------- writing


def _release_freed_memory() -> None:
    """Hand memory freed after a batch back to the system (glibc's ``malloc_trim``).

    The tokenizer's threads allocate and free a batch's encodings in per-thread malloc arenas;
    glibc keeps what they free, and the process's resident set creeps up over a long run with
    nothing in use. Trimming every `TRIM_CHARS` keeps it near what the batches in flight need
    (a 1 GB corpus peaks at 630 MB, imports included: benchmarks/results/tokenize_bench.json);
    not after every batch, because the pages handed back are faulted in again by the next one.
    A no-op where the C library has no ``malloc_trim``.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _shard_name(index: int) -> str:
    return f"tokens-{index:05d}.bin"


@dataclass(frozen=True)
class _Resume:
    """Where a run continues: document ``document`` starts at token ``start``; tokens before
    ``position`` (the end of the last complete shard) are on disk already."""

    document: int
    start: int
    position: int
    shards: tuple[core.Shard, ...]


class _ShardWriter:
    """Appends the token stream to fixed-size shards and the document starts to offsets.bin,
    and records after every complete shard where a killed run would continue."""

    def __init__(
        self,
        root: Path,
        *,
        dtype: str,
        shard_tokens: int,
        settings: dict[str, Any],
        resume: _Resume | None,
        on_shard: Callable[[int], None] | None,
    ) -> None:
        self.root = root
        self.np_dtype = _NP_DTYPES[dtype]
        self.shard_tokens = shard_tokens
        self.settings = settings
        self.on_shard = on_shard
        self.shards: list[core.Shard] = list(resume.shards) if resume else []
        self.document = resume.document if resume else 0  # index of the next document to start
        self.doc_start = resume.start if resume else 0  # where the current document began
        self.pos = resume.start if resume else 0  # stream position of the next token
        self.skip_until = resume.position if resume else 0  # tokens before it are on disk
        self.in_shard = 0
        self._shard_fh: Any = None
        self._offsets = open(root / core.OFFSETS, "ab")  # noqa: SIM115 (closed in close())
        self._offsets.truncate(self.document * 8)
        self._offsets.seek(0, os.SEEK_END)

    def _tmp(self) -> Path:
        return self.root / f".{_shard_name(len(self.shards))}.tmp"

    def start_document(self) -> None:
        """The next tokens begin a document."""
        self.doc_start = self.pos
        self._offsets.write(np.array([self.pos], dtype="<i8").tobytes())
        self.document += 1

    def write(self, ids: np.ndarray[Any, Any], *, ends_document: bool) -> None:
        """Append ``ids`` (already with EOS if they end a document) to the stream."""
        n = int(ids.shape[0])
        at = 0
        if self.pos < self.skip_until:  # resuming: these tokens are in a complete shard
            at = min(n, self.skip_until - self.pos)
            self.pos += at
        while at < n:
            if self._shard_fh is None:
                self._shard_fh = open(self._tmp(), "wb")  # noqa: SIM115 (closed at shard end)
            take = min(n - at, self.shard_tokens - self.in_shard)
            self._shard_fh.write(ids[at : at + take].tobytes())
            at += take
            self.in_shard += take
            self.pos += take
            if self.in_shard == self.shard_tokens:
                done_doc = ends_document and at == n
                self._complete_shard(
                    resume_document=self.document if done_doc else self.document - 1,
                    resume_start=self.pos if done_doc else self.doc_start,
                )

    def _complete_shard(self, *, resume_document: int, resume_start: int) -> None:
        # Order matters for a kill at any moment: the shard's bytes and the offsets reach the
        # disk, the shard is renamed into place, and only then does progress.json point past it.
        fh = self._shard_fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._shard_fh = None
        name = _shard_name(len(self.shards))
        os.replace(self._tmp(), self.root / name)
        self.shards.append(core.Shard(name, self.in_shard))
        self.in_shard = 0
        self._offsets.flush()
        os.fsync(self._offsets.fileno())
        fsync_dir(self.root)
        progress = {
            "settings": self.settings,
            "shards": [{"file": s.file, "tokens": s.tokens} for s in self.shards],
            "resume": {"document": resume_document, "start": resume_start, "position": self.pos},
        }
        _write_json_atomic(self.root / PROGRESS, progress)
        if self.on_shard is not None:
            self.on_shard(len(self.shards) - 1)

    def finish(self) -> int:
        """Close the last shard and end offsets.bin with the stream's length; the token count."""
        if self.in_shard:
            self._complete_shard(resume_document=self.document, resume_start=self.pos)
        self._offsets.write(np.array([self.pos], dtype="<i8").tobytes())
        self._offsets.flush()
        os.fsync(self._offsets.fileno())
        return self.pos

    def close(self) -> None:
        """Release the files (a finished or an interrupted run)."""
        if self._shard_fh is not None:
            self._shard_fh.close()
            self._shard_fh = None
        self._offsets.close()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold ``root``'s lock: two writers of one directory (two jobs on one raw corpus, or a job
    and ``p2law tokenize``) take turns, and the second finds the first one's result."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _clear(root: Path) -> None:
    """Remove every file a run writes (not the lock, not foreign files)."""
    for child in root.iterdir():
        name = child.name
        if (
            core.SHARD_NAME.match(name)
            or name in (core.OFFSETS, PROGRESS, core.MANIFEST)
            or (name.startswith(".") and name.endswith(".tmp"))
        ):
            child.unlink()


def _resume_point(root: Path, settings: dict[str, Any]) -> _Resume | None:
    """Where an interrupted run with the same settings stands, after removing what it wrote
    past its last complete shard; None (and a clean directory) when there is nothing to resume."""
    try:
        progress = json.loads((root / PROGRESS).read_text())
        if progress["settings"] != settings:
            raise ValueError("other settings")
        shards = tuple(core.Shard(str(s["file"]), int(s["tokens"])) for s in progress["shards"])
        resume = _Resume(
            int(progress["resume"]["document"]),
            int(progress["resume"]["start"]),
            int(progress["resume"]["position"]),
            shards,
        )
        item = _NP_DTYPES[str(settings["dtype"])].itemsize
        for shard in shards:
            if (root / shard.file).stat().st_size != shard.tokens * item:
                raise ValueError(f"{shard.file} changed")
        if (root / core.OFFSETS).stat().st_size < resume.document * 8:
            raise ValueError("offsets.bin is short")
    except (OSError, ValueError, KeyError, TypeError):
        _clear(root)
        return None
    kept = {s.file for s in shards}
    for child in root.iterdir():  # a shard renamed after the last progress record, temp files
        stray_shard = core.SHARD_NAME.match(child.name) and child.name not in kept
        if stray_shard or (child.name.startswith(".") and child.name.endswith(".tmp")):
            child.unlink()
    return resume


def _skip_documents(pieces: Iterator[Piece], n: int) -> Iterator[Piece]:
    """``pieces`` after the first ``n`` documents (read, not tokenised)."""
    done = 0
    while done < n:
        piece = next(pieces, None)
        if piece is None:
            raise DataError("the source has fewer documents than the interrupted run had read")
        done += piece.end
    return pieces


def _heldout(
    root: Path, n_tokens: int, n_documents: int, heldout_tokens: int | None
) -> dict[str, Any]:
    """The manifest's held-out range: the last documents holding at least ``heldout_tokens``
    tokens (default ``min(2^20, tokens // 10)``), so no document is split between training and
    evaluation; cut inside the first document only when it alone is that long."""
    wanted = heldout_tokens if heldout_tokens is not None else min(HELDOUT_TOKENS, n_tokens // 10)
    if wanted < 1 or wanted >= n_tokens:
        raise DataError(
            f"{n_tokens} tokens: too few for a held-out range of {wanted} tokens plus training "
            "data (give a smaller --heldout-tokens)"
        )
    cut = n_tokens - wanted
    offsets = np.memmap(root / core.OFFSETS, dtype="<i8", mode="r", shape=(n_documents + 1,))
    first = int(np.searchsorted(offsets[:n_documents], cut, side="right")) - 1
    aligned = first >= 1  # a boundary after the first document; else cut inside it
    start = int(offsets[first]) if aligned else cut
    del offsets
    out: dict[str, Any] = {
        "kind": "range",
        "start": start,
        "end": n_tokens,
        "tokens": n_tokens - start,
        "document_aligned": aligned,
        "rule": "the last documents holding at least the requested tokens; never trained on",
    }
    if aligned:
        out["first_document"] = first
        out["documents"] = n_documents - first
    return out


def tokenize_to_dir(
    source: Path,
    out: Path,
    tokenizer: PreTrainedTokenizerBase | Encoder,
    *,
    tokenizer_fingerprint: str,
    tokenizer_model: str = "",
    text_field: str = "text",
    heldout: str | int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    batch_chars: int = BATCH_CHARS,
    piece_bytes: int = data_mod.PIECE_BYTES,
    overwrite: bool = False,
    on_shard: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> core.Manifest:
    """Tokenise ``source`` into the token directory ``out``; return its manifest.

    ``heldout``: ``"tail"`` (the raw-text rule, decided per job), a number of held-out tokens,
    or None for ``min(2^20, tokens // 10)``. Finds a finished directory of the same source,
    tokenizer and settings and returns it as it is; continues an interrupted run from its last
    complete shard; refuses a directory that holds another dataset unless ``overwrite``.
    ``on_shard(index)`` runs after each complete shard, ``on_progress(tokens, characters)``
    after each batch.
    """
    encoder = tokenizer if isinstance(tokenizer, Encoder) else Encoder.from_tokenizer(tokenizer)
    if shard_tokens < 1 or batch_chars < 1:
        raise ValueError("shard_tokens and batch_chars must be positive")
    fmt = data_mod.source_format(source)
    src = source_fingerprint(source)
    dtype = core.token_dtype(encoder.vocab_size)
    settings = {
        "source": src["fingerprint"],
        "tokenizer": tokenizer_fingerprint,
        "text_field": text_field,
        "dtype": dtype,
        "eos_id": encoder.eos_id,
        "shard_tokens": shard_tokens,
        "heldout": heldout,
    }
    if out.is_dir() and not core.is_token_dir(out) and any(c.name != LOCK for c in out.iterdir()):
        raise DataError(f"{out} holds other files; a token directory needs one of its own")
    with _locked(out):
        if (out / core.MANIFEST).exists():
            try:
                existing = core.read_manifest(out)
            except core.ManifestError:
                existing = None
            if existing is not None and existing.raw.get("settings") == settings:
                return existing
            if not overwrite:
                raise DataError(
                    f"{out} already holds a tokenised dataset made from another source, "
                    "tokenizer or settings; choose another name or overwrite it"
                )
            _clear(out)
        resume = _resume_point(out, settings)
        pieces = data_mod.iter_pieces(source, text_field=text_field, piece_bytes=piece_bytes)
        if resume is not None:
            pieces = _skip_documents(pieces, resume.document)
        writer = _ShardWriter(
            out,
            dtype=dtype,
            shard_tokens=shard_tokens,
            settings=settings,
            resume=resume,
            on_shard=on_shard,
        )
        np_dtype = _NP_DTYPES[dtype]
        eos = np.array([encoder.eos_id], dtype=np_dtype)
        chars = trimmed_at = 0
        try:
            for batch, ids in _encoded(_units(pieces, encoder), encoder, batch_chars):
                for unit, unit_ids in zip(batch, ids, strict=True):
                    if unit.start:
                        writer.start_document()
                    try:
                        arr = np.asarray(unit_ids, dtype=np_dtype)
                    except OverflowError:
                        raise DataError(f"a token id does not fit in {dtype}") from None
                    if unit.end:
                        arr = np.concatenate([arr, eos])
                    writer.write(arr, ends_document=unit.end)
                    chars += len(unit.text)
                if chars - trimmed_at >= TRIM_CHARS:
                    _release_freed_memory()
                    trimmed_at = chars
                if on_progress is not None:
                    on_progress(writer.pos, chars)
            n_tokens = writer.finish()
        finally:
            writer.close()
        n_documents = writer.document
        if n_tokens == 0:
            _clear(out)
            raise DataError(f"{source}: no text")
        if source_fingerprint(source)["fingerprint"] != src["fingerprint"]:
            _clear(out)
            raise DataError(f"{source} changed while it was being tokenised; run it again")
        held = (
            {"kind": "tail", "rule": "the last eval_tokens of seq_len blocks, as raw text"}
            if heldout == "tail"
            else _heldout(out, n_tokens, n_documents, heldout if isinstance(heldout, int) else None)
        )
        manifest = {
            "format": core.FORMAT,
            "version": core.VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tokenizer": {
                "fingerprint": tokenizer_fingerprint,
                "model": tokenizer_model,
                "vocab_size": encoder.vocab_size,
                "eos_id": encoder.eos_id,
                "eos_token": encoder.eos_token,
            },
            "source": {
                "path": str(source),
                "format": fmt,
                "text_field": text_field if fmt != "txt" else None,
                "fingerprint": src["fingerprint"],
                "bytes": src["bytes"],
            },
            "dtype": dtype,
            "byte_order": "little",
            "eos": {
                "id": encoder.eos_id,
                "token": encoder.eos_token,
                "placement": "after every document: doc0 EOS doc1 EOS ...",
            },
            "counts": {
                "documents": n_documents,
                "tokens": n_tokens,
                "shards": len(writer.shards),
            },
            "shard_tokens": shard_tokens,
            "shards": [{"file": s.file, "tokens": s.tokens} for s in writer.shards],
            "offsets": {
                "file": core.OFFSETS,
                "dtype": "int64",
                "entries": n_documents + 1,
                "meaning": "start of every document in the stream, then the stream's length",
            },
            "heldout": held,
            "settings": settings,
        }
        _write_json_atomic(out / core.MANIFEST, manifest)
        (out / PROGRESS).unlink(missing_ok=True)
        fsync_dir(out)
        return core.read_manifest(out)


# --------------------------------------------------------------------------- reading


class TokenStore:
    """The token stream of a finished directory, read through memory maps of its shards."""

    def __init__(self, manifest: core.Manifest) -> None:
        self.manifest = manifest
        self.np_dtype = _NP_DTYPES[manifest.dtype]
        self._maps: dict[int, np.memmap[Any, Any]] = {}

    def _shard(self, index: int) -> np.memmap[Any, Any]:
        mapped = self._maps.get(index)
        if mapped is None:  # mapped on first use: a job touches the shards it reads only
            shard = self.manifest.shards[index]
            mapped = np.memmap(
                self.manifest.root / shard.file, dtype=self.np_dtype, mode="r", shape=shard.tokens
            )
            self._maps[index] = mapped
        return mapped

    def copy_into(self, start: int, out: np.ndarray[Any, Any]) -> None:
        """Copy the tokens ``[start, start + len(out))`` into ``out`` (any integer dtype)."""
        n = int(out.shape[0])
        if start < 0 or start + n > self.manifest.n_tokens:
            raise IndexError(f"tokens [{start}, {start + n}) are outside the stream")
        size = self.manifest.shard_tokens
        done = 0
        while done < n:
            index, offset = divmod(start + done, size)
            take = min(n - done, self.manifest.shards[index].tokens - offset)
            out[done : done + take] = self._shard(index)[offset : offset + take]
            done += take

    def read(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """A copy of the tokens ``[start, stop)`` as int64."""
        out = np.empty(stop - start, dtype=np.int64)
        self.copy_into(start, out)
        return out

    def offsets(self) -> np.memmap[Any, Any]:
        """Document starts and, last, the stream's length (a memory map)."""
        return np.memmap(
            self.manifest.root / core.OFFSETS,
            dtype="<i8",
            mode="r",
            shape=(self.manifest.n_documents + 1,),
        )


class MemmapBlocks:
    """``n_blocks`` consecutive ``seq_len`` blocks of a token stream from token ``start``, as a
    ``workers.ml.data.BlockSource``: :meth:`take` copies only the rows asked for."""

    def __init__(self, store: TokenStore, start: int, n_blocks: int, seq_len: int) -> None:
        if start < 0 or n_blocks < 0 or start + n_blocks * seq_len > store.manifest.n_tokens:
            raise DataError("the blocks lie outside the token stream")
        self.store = store
        self.start = start
        self._n_blocks = n_blocks
        self._seq_len = seq_len

    @property
    def n_blocks(self) -> int:
        """Number of blocks."""
        return self._n_blocks

    @property
    def seq_len(self) -> int:
        """Tokens per block."""
        return self._seq_len

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` as an int64 ``[len(indices), seq_len]`` CPU tensor."""
        rows = indices.tolist()
        out = np.empty((len(rows), self._seq_len), dtype=np.int64)
        for row, index in enumerate(rows):
            if not 0 <= index < self._n_blocks:
                raise IndexError(f"block {index} of {self._n_blocks}")
            self.store.copy_into(self.start + index * self._seq_len, out[row])
        return torch.from_numpy(out)

    def all(self) -> torch.Tensor:
        """Every block, in order (for small sets: the held-out blocks)."""
        return self.take(torch.arange(self._n_blocks))


@dataclass(frozen=True)
class JobSplits:
    """A job's data: training blocks read from shards, the held-out blocks in memory."""

    train: MemmapBlocks
    eval: torch.Tensor
    seq_len: int
    protocol: str
    manifest: core.Manifest


def open_dataset(root: Path) -> core.Manifest:
    """The checked manifest of a finished token directory (DataError when it is not one)."""
    try:
        return core.read_manifest(root)
    except core.ManifestError as exc:
        raise DataError(str(exc)) from None


def _plan(manifest: core.Manifest, seq_len: int, eval_tokens: int | None) -> core.SplitPlan:
    try:
        return core.plan_split(manifest, seq_len, eval_tokens)
    except core.SplitError as exc:
        raise DataError(str(exc)) from None


def _splits(
    manifest: core.Manifest, plan: core.SplitPlan, eval_blocks: torch.Tensor | None = None
) -> JobSplits:
    store = TokenStore(manifest)
    train = MemmapBlocks(store, plan.train_start, plan.n_train, plan.seq_len)
    if eval_blocks is None:
        eval_blocks = MemmapBlocks(store, plan.eval_start, plan.n_eval, plan.seq_len).all()
    protocol = data_mod.fingerprint(eval_blocks, plan.seq_len)
    return JobSplits(train, eval_blocks, plan.seq_len, protocol, manifest)


def default_cache_root() -> Path:
    """Where raw-text jobs keep their token directories: ``ARTIFACT_ROOT/_token-cache``, beside
    the jobs' work directories (``ARTIFACT_ROOT/_work``) and as writable as they are."""
    from app.core.config import get_settings

    return Path(get_settings().artifact_root) / "_token-cache"


def cached_tokens(
    source: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    tokenizer_fingerprint: str,
    text_field: str,
    cache_root: Path,
) -> core.Manifest:
    """The token directory of raw text ``source``, tokenised on first use: one per (source,
    tokenizer, text field), shared by every job and retry that reads them."""
    src = source_fingerprint(source)["fingerprint"]
    key = hashlib.sha256(f"{src}|{tokenizer_fingerprint}|{text_field}".encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:48]
    return tokenize_to_dir(
        source,
        cache_root / f"{name}-{key[:20]}",
        tokenizer,
        tokenizer_fingerprint=tokenizer_fingerprint,
        text_field=text_field,
        heldout="tail",
        # The key already pins the source, tokenizer and field: a directory there that does not
        # read back (a file deleted by hand) is rebuilt rather than refused.
        overwrite=True,
    )


def job_splits(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    *,
    model: str,
    text_field: str = "text",
    eval_path: Path | None = None,
    eval_tokens: int | None = None,
    cache_root: Path | None = None,
) -> JobSplits:
    """A job's training and held-out blocks, read from token shards.

    ``path`` a token directory: its manifest must carry ``model``'s tokenizer fingerprint, and
    its held-out range gives the evaluation blocks (``eval_path`` is refused). Raw text: tokenised
    once into ``cache_root`` (default :func:`default_cache_root`) and split as
    ``data.make_splits`` splits it — the same blocks, the same ``protocol``.
    """
    if seq_len < 2:
        raise DataError("seq_len must be at least 2")
    if core.is_token_dir(path):
        manifest = open_dataset(path)
        if eval_path is not None:
            raise DataError(
                f"{path} is a tokenised dataset, which carries its held-out set; "
                "dataset.eval_path cannot be given with it"
            )
        if not Path(model).is_dir():
            raise DataError(f"a tokenised dataset needs a local model directory, not {model!r}")
        fp = model_fingerprint(model)
        if fp != manifest.tokenizer_fingerprint:
            raise DataError(tokenizer_mismatch(model, fp, path, manifest))
        if tokenizer.eos_token_id != manifest.eos_id:
            raise DataError(
                f"{path}: EOS id {manifest.eos_id} in the manifest, the tokenizer of {model} "
                f"has {tokenizer.eos_token_id}"
            )
        return _splits(manifest, _plan(manifest, seq_len, eval_tokens))
    root = cache_root if cache_root is not None else default_cache_root()
    fp = model_fingerprint(model, tokenizer)

    def cached(source: Path) -> core.Manifest:
        return cached_tokens(
            source, tokenizer, tokenizer_fingerprint=fp, text_field=text_field, cache_root=root
        )

    manifest = cached(path)
    if eval_path is None:
        try:
            plan = core.plan_split(manifest, seq_len, eval_tokens)
        except core.SplitError as exc:
            raise DataError(str(exc).replace(str(manifest.root), str(path))) from None
        return _splits(manifest, plan)
    # An explicit held-out file: its first eval_tokens worth of blocks; every block of `path`
    # trains (data.make_splits's rule).
    eval_manifest = cached(eval_path)
    n_eval = math.ceil((eval_tokens or data_mod.default_eval_tokens(seq_len)) / seq_len)
    n_eval = min(n_eval, eval_manifest.n_tokens // seq_len)
    n_train = manifest.n_tokens // seq_len
    if n_eval == 0 or n_train == 0:
        raise DataError(f"{path} / {eval_path}: too little text for seq_len={seq_len}")
    eval_blocks = MemmapBlocks(TokenStore(eval_manifest), 0, n_eval, seq_len).all()
    return _splits(manifest, core.SplitPlan(seq_len, 0, n_train, 0, n_eval), eval_blocks)


def tokenizer_mismatch(model: str, model_fp: str, dataset: Path, manifest: core.Manifest) -> str:
    """The message of a job whose model does not tokenise like its dataset was tokenised."""
    made_with = manifest.tokenizer_model or "another model"
    return (
        f"dataset {dataset} was tokenised with tokenizer {manifest.tokenizer_fingerprint} "
        f"({made_with}), but model {model} has tokenizer {model_fp}; tokenise the text again "
        "with this model (p2law tokenize SOURCE --model MODEL --name NAME)"
    )


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="p2law tokenize",
        description="Tokenise a .txt, JSONL or saved HF dataset into memory-mapped token shards.",
    )
    parser.add_argument("source", type=Path, help="a .txt/.jsonl file or a saved HF dataset dir")
    parser.add_argument("--model", type=Path, required=True, help="HF model directory")
    parser.add_argument("--out", type=Path, required=True, help="the token directory to write")
    parser.add_argument("--text-field", default="text", help="JSONL/HF field (default: text)")
    parser.add_argument(
        "--heldout-tokens",
        type=int,
        default=None,
        help=f"held-out tokens at the end (default: min({HELDOUT_TOKENS}, tokens / 10))",
    )
    parser.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS)
    parser.add_argument("--overwrite", action="store_true", help="replace another dataset there")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    started = time.monotonic()
    last = [started]

    def progress(tokens: int, chars: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 10:
            last[0] = now
            rate = chars / 1e6 / (now - started)
            print(f"{tokens:,} tokens, {rate:.2f} M characters/s", file=sys.stderr, flush=True)

    try:
        fp = core.tokenizer_fingerprint(args.model)
        tokenizer = AutoTokenizer.from_pretrained(str(args.model), local_files_only=True)
        manifest = tokenize_to_dir(
            args.source,
            args.out,
            tokenizer,
            tokenizer_fingerprint=fp,
            tokenizer_model=str(args.model),
            text_field=args.text_field,
            heldout=args.heldout_tokens,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
            on_progress=progress,
        )
    except (DataError, core.TokenizerFilesError, core.ManifestError, OSError) as exc:
        print(f"p2law tokenize: error: {exc}", file=sys.stderr)
        return 2
    held = manifest.heldout
    print(
        f"{manifest.root}: {manifest.n_documents:,} documents, {manifest.n_tokens:,} tokens "
        f"({manifest.dtype}) in {len(manifest.shards)} shards; held out: tokens "
        f"[{held.start:,}, {held.end:,}); tokenizer {manifest.tokenizer_fingerprint}; "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
