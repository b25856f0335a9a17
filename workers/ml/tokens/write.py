"""Writing a token directory: :func:`tokenize_to_dir`.

The source's documents stream in (``workers.ml.data.iter_pieces``: .txt, JSONL, saved HF
dataset), are encoded in batches (``workers.ml.tokens.encode``), get EOS after every document,
and go into fixed-size shards, each written through ``app.core.atomic`` (a temporary file
renamed into place) while ``offsets.bin`` collects the document starts. After every complete
shard ``progress.json`` records where the stream stands, so a killed run continues from its last
complete shard; ``manifest.json`` is written last. Both files are ``app.core.tokens``'s models.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from app.core import atomic
from app.core import tokens as core
from workers.ml.data import PIECE_BYTES, DataError, Piece, iter_pieces, source_format
from workers.ml.tokens.encode import BATCH_CHARS, NP_DTYPES, Encoder, Unit, encoded, units
from workers.ml.tokens.fingerprint import source_fingerprint

LOCK = ".lock"
#: 64M tokens: 128 MiB uint16 shards, as large as OLMo's and Megatron's usual files and small
#: enough that a killed run loses little.
SHARD_TOKENS = 1 << 26
#: Characters tokenised between two returns of freed memory to the system (`malloc_trim`).
TRIM_CHARS = 1 << 25
#: Held-out tokens of ``p2law tokenize`` unless asked otherwise: 2^20 (128 sequences of 8,192),
#: at most a tenth of the corpus.
HELDOUT_TOKENS = 1 << 20
#: The JSONL/HF field a document's text is read from unless asked otherwise.
TEXT_FIELD = "text"


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


def _is_temporary(name: str) -> bool:
    """A file ``app.core.atomic`` was writing (or, from an older run, a ``.NAME.tmp``)."""
    return name.startswith(".") and (".tmp-" in name or name.endswith(".tmp"))


class _ShardWriter:
    """Writes the token stream into fixed-size shards and the document starts into offsets.bin,
    and records after every complete shard where a killed run would continue."""

    def __init__(
        self,
        root: Path,
        *,
        settings: core.TokenizeSettings,
        resume: core.Progress | None,
        on_shard: Callable[[int], None] | None,
    ) -> None:
        self.root = root
        self.settings = settings
        self.shard_tokens = settings.shard_tokens
        self.on_shard = on_shard
        self.shards: list[core.Shard] = list(resume.shards) if resume else []
        point = resume.resume if resume else None
        self.document = point.document if point else 0  # index of the next document to start
        self.doc_start = point.start if point else 0  # where the current document began
        self.pos = point.start if point else 0  # stream position of the next token
        self.skip_until = point.position if point else 0  # tokens before it are on disk
        self._offsets = open(root / core.OFFSETS, "ab")  # noqa: SIM115 (closed in close())
        self._offsets.truncate(self.document * 8)
        self._offsets.seek(0, os.SEEK_END)

    def _pieces(
        self, stream: Iterable[tuple[Unit, np.ndarray[Any, Any]]]
    ) -> Iterator[tuple[np.ndarray[Any, Any], bool]]:
        """The ids still to write, each with whether it ends a document, cut at the shards'
        boundaries; a document's start goes to offsets.bin when its first ids come."""
        for unit, ids in stream:
            if unit.start:
                self.doc_start = self.pos
                self._offsets.write(np.array([self.pos], dtype="<i8").tobytes())
                self.document += 1
            n = int(ids.shape[0])
            at = 0
            if self.pos < self.skip_until:  # resuming: these tokens are in a complete shard
                at = min(n, self.skip_until - self.pos)
                self.pos += at
            while at < n:
                boundary = (self.pos // self.shard_tokens + 1) * self.shard_tokens
                take = min(n - at, boundary - self.pos)
                yield ids[at : at + take], unit.end and at + take == n
                at += take

    def write(self, stream: Iterable[tuple[Unit, np.ndarray[Any, Any]]]) -> int:
        """Write ``stream`` (every unit with its ids, EOS included where a document ends) from
        where the run stands, end offsets.bin with the stream's length; the token count."""
        pieces = self._pieces(stream)
        piece = next(pieces, None)
        while piece is not None:
            self._shard(piece, pieces)
            piece = next(pieces, None)
        self._offsets.write(np.array([self.pos], dtype="<i8").tobytes())
        self._offsets.flush()
        os.fsync(self._offsets.fileno())
        return self.pos

    def _shard(
        self,
        first: tuple[np.ndarray[Any, Any], bool],
        pieces: Iterator[tuple[np.ndarray[Any, Any], bool]],
    ) -> None:
        """Write the next shard, from ``first`` on until it is full or the stream ends."""
        in_shard = 0
        ends_document = False

        def fill(fh: IO[bytes]) -> None:
            nonlocal in_shard, ends_document
            piece: tuple[np.ndarray[Any, Any], bool] | None = first
            while piece is not None:
                ids, ends_document = piece
                fh.write(ids.tobytes())
                in_shard += int(ids.shape[0])
                self.pos += int(ids.shape[0])
                if in_shard == self.shard_tokens:
                    return
                piece = next(pieces, None)

        # Order matters for a kill at any moment: the shard is on disk under its name, then the
        # offsets are, and only then does progress.json point past it.
        index = len(self.shards)
        name = core.shard_name(index)
        atomic.write_with(self.root / name, fill)
        self.shards.append(core.Shard(file=name, tokens=in_shard))
        self._offsets.flush()
        os.fsync(self._offsets.fileno())
        # A shard that ends inside a document resumes at that document's start.
        resume = core.ResumePoint(
            document=self.document if ends_document else self.document - 1,
            start=self.pos if ends_document else self.doc_start,
            position=self.pos,
        )
        progress = core.Progress(settings=self.settings, shards=tuple(self.shards), resume=resume)
        atomic.write_json(self.root / core.PROGRESS, progress.to_json())
        if self.on_shard is not None:
            self.on_shard(index)

    def close(self) -> None:
        """Release offsets.bin (a finished or an interrupted run)."""
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
            core.SHARD_NAME.fullmatch(name)
            or name in (core.OFFSETS, core.PROGRESS, core.MANIFEST)
            or _is_temporary(name)
        ):
            child.unlink()


def _resume_point(root: Path, settings: core.TokenizeSettings) -> core.Progress | None:
    """Where an interrupted run with the same settings stands, after removing what it wrote
    past its last complete shard; None (and a clean directory) when there is nothing to resume."""
    try:
        progress = core.Progress.model_validate_json((root / core.PROGRESS).read_bytes())
        if progress.settings != settings:
            raise ValueError("other settings")
        item = NP_DTYPES[settings.dtype].itemsize
        for shard in progress.shards:
            if (root / shard.file).stat().st_size != shard.tokens * item:
                raise ValueError(f"{shard.file} changed")
        if (root / core.OFFSETS).stat().st_size < progress.resume.document * 8:
            raise ValueError("offsets.bin is short")
    except (OSError, ValueError):  # pydantic's ValidationError included
        _clear(root)
        return None
    kept = {s.file for s in progress.shards}
    for child in root.iterdir():  # a shard renamed after the last progress record, temp files
        stray_shard = core.SHARD_NAME.fullmatch(child.name) and child.name not in kept
        if stray_shard or _is_temporary(child.name):
            child.unlink()
    return progress


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
) -> core.Heldout:
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
    return core.Heldout(
        kind="range",
        start=start,
        end=n_tokens,
        tokens=n_tokens - start,
        document_aligned=aligned,
        rule=core.RANGE_RULE,
        first_document=first if aligned else None,
        documents=n_documents - first if aligned else None,
    )


def _ids(
    pieces: Iterator[Piece],
    encoder: Encoder,
    *,
    dtype: core.TokenDtype,
    batch_chars: int,
    writer: _ShardWriter,
    on_progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[Unit, np.ndarray[Any, Any]]]:
    """Every unit of ``pieces`` with its ids as ``dtype`` (and EOS where a document ends);
    between batches, freed memory goes back and ``on_progress(tokens, characters)`` runs."""
    np_dtype = NP_DTYPES[dtype]
    eos = np.array([encoder.eos_id], dtype=np_dtype)
    chars = trimmed_at = 0
    for batch, ids in encoded(units(pieces, encoder), encoder, batch_chars):
        for unit, unit_ids in zip(batch, ids, strict=True):
            try:
                arr = np.asarray(unit_ids, dtype=np_dtype)
            except OverflowError:
                raise DataError(f"a token id does not fit in {dtype}") from None
            yield unit, np.concatenate([arr, eos]) if unit.end else arr
            chars += len(unit.text)
        if chars - trimmed_at >= TRIM_CHARS:
            _release_freed_memory()
            trimmed_at = chars
        if on_progress is not None:
            on_progress(writer.pos, chars)


def tokenize_to_dir(
    source: Path,
    out: Path,
    tokenizer: PreTrainedTokenizerBase | Encoder,
    *,
    tokenizer_fingerprint: str,
    tokenizer_model: str = "",
    text_field: str = TEXT_FIELD,
    heldout: core.HeldoutRequest = None,
    shard_tokens: int = SHARD_TOKENS,
    batch_chars: int = BATCH_CHARS,
    piece_bytes: int = PIECE_BYTES,
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
    fmt = source_format(source)
    src = source_fingerprint(source)
    dtype = core.token_dtype(encoder.vocab_size)
    settings = core.TokenizeSettings(
        source=src["fingerprint"],
        tokenizer=tokenizer_fingerprint,
        text_field=text_field,
        dtype=dtype,
        eos_id=encoder.eos_id,
        shard_tokens=shard_tokens,
        heldout=heldout,
    )
    if out.is_dir() and not core.is_token_dir(out) and any(c.name != LOCK for c in out.iterdir()):
        raise DataError(f"{out} holds other files; a token directory needs one of its own")
    with _locked(out):
        if (out / core.MANIFEST).exists():
            try:
                existing = core.read_manifest(out)
            except core.ManifestError:
                existing = None
            if existing is not None and existing.settings == settings:
                return existing
            if not overwrite:
                raise DataError(
                    f"{out} already holds a tokenised dataset made from another source, "
                    "tokenizer or settings; choose another name or overwrite it"
                )
            _clear(out)
        resume = _resume_point(out, settings)
        pieces = iter_pieces(source, text_field=text_field, piece_bytes=piece_bytes)
        if resume is not None:
            pieces = _skip_documents(pieces, resume.resume.document)
        writer = _ShardWriter(out, settings=settings, resume=resume, on_shard=on_shard)
        try:
            n_tokens = writer.write(
                _ids(
                    pieces,
                    encoder,
                    dtype=dtype,
                    batch_chars=batch_chars,
                    writer=writer,
                    on_progress=on_progress,
                )
            )
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
            core.Heldout(kind="tail", rule=core.TAIL_RULE)
            if heldout == "tail"
            else _heldout(out, n_tokens, n_documents, heldout if isinstance(heldout, int) else None)
        )
        manifest = core.Manifest(
            format=core.FORMAT,
            version=core.VERSION,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            tokenizer=core.TokenizerInfo(
                fingerprint=tokenizer_fingerprint,
                model=tokenizer_model,
                vocab_size=encoder.vocab_size,
                eos_id=encoder.eos_id,
                eos_token=encoder.eos_token,
            ),
            source=core.SourceInfo(
                path=str(source),
                format=fmt,
                text_field=text_field if fmt != "txt" else None,
                fingerprint=src["fingerprint"],
                bytes=src["bytes"],
            ),
            dtype=dtype,
            eos=core.EosInfo(id=encoder.eos_id, token=encoder.eos_token),
            counts=core.Counts(documents=n_documents, tokens=n_tokens, shards=len(writer.shards)),
            shard_tokens=shard_tokens,
            shards=tuple(writer.shards),
            offsets=core.OffsetsInfo(entries=n_documents + 1),
            heldout=held,
            settings=settings,
        )
        atomic.write_json(out / core.MANIFEST, manifest.to_json())
        (out / core.PROGRESS).unlink(missing_ok=True)
        atomic.fsync_dir(out)
        return core.read_manifest(out)
