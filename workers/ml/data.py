"""Datasets for post-training jobs: read, tokenise, pack, split, fingerprint, stream.

A corpus is turned into one long token stream (EOS after every document) and cut into
`seq_len` blocks. The held-out evaluation set is fixed by the data alone (an explicit
`eval_path`, or the last blocks of the corpus), so every checkpoint of a run and L0 are
measured on the same token ids (docs/law.md §3); its fingerprint becomes the observation's
`protocol`. Training never sees an evaluation block; calibration sequences for pruning
come from the training blocks only.

Documents are read as a stream (:func:`iter_pieces`), never a whole file at once; jobs
tokenise them once into memory-mapped token shards (``workers/ml/tokens/``) and draw their
batches from there (a ``BlockSource``). The in-memory functions below
(:func:`make_splits` and friends) remain for ``make_model`` and as the reference the shards are
tested against.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from app.core import tokens as core_tokens


class BlockSource(Protocol):
    """Training blocks ``[n_blocks, seq_len]`` read by index: a tensor in memory, or token
    shards on disk read through a memory map (host memory per batch, not per corpus)."""

    @property
    def n_blocks(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The blocks at ``indices`` as an int64 ``[len(indices), seq_len]`` tensor."""
        ...


# Plain-text files may hold several documents separated by this character (ASCII record
# separator, which ordinary text never contains); a file without it is one document.
DOC_SEPARATOR = "\x1e"
_SEPARATOR_BYTE = b"\x1e"

# Documents tokenised per call: the fast tokenizer parallelises inside a batch, and a bounded
# batch keeps peak memory at a few copies of the batch's text.
_TOKENIZE_BATCH = 256

# Bytes read from a text file at a time; a document longer than PIECE_BYTES is handed on in
# pieces cut after a newline (see `iter_pieces`), so no file is ever held whole in memory.
_READ_BYTES = 1 << 20
PIECE_BYTES = 1 << 23
# A cut goes after b"\n" when the next byte is printable ASCII (not a space): regex
# pre-tokenizers start a new pre-token there, so both sides tokenise as they would together
# (the tokeniser still checks every cut, `workers/ml/tokens/encode.py`).
_CUT = re.compile(rb"\n(?=[\x21-\x7e])")


class DataError(ValueError):
    """The dataset cannot be read or is too small for the requested split."""


@dataclass(frozen=True)
class Splits:
    """Packed token blocks of one job: `train` and `eval` are disjoint `[n, seq_len]` tensors."""

    train: torch.Tensor
    eval: torch.Tensor
    seq_len: int
    protocol: str


def default_eval_tokens(seq_len: int) -> int:
    """Size of the held-out set when a job does not choose one: 128 sequences."""
    return core_tokens.default_eval_tokens(seq_len)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Piece:
    """Text of one document, or of a part of it; `end`: the document ends with this piece."""

    text: str
    end: bool


def _decode_txt(raw: bytes) -> str:
    # What `Path.read_text(encoding="utf-8", errors="replace")` gives: replacement characters
    # for bad bytes and universal newlines. Every cut is at b"\x1e" or right after b"\n", never
    # inside a UTF-8 sequence or a "\r\n" pair, so decoding part by part gives the same text.
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _txt_pieces(path: Path, piece_bytes: int) -> Iterator[Piece]:
    """Documents of a .txt file (split on DOC_SEPARATOR, blank ones dropped), read in chunks."""
    pending = bytearray()  # bytes of the current document not yet handed on
    emitted = False  # a piece of the current document was already handed on
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(_READ_BYTES)
            pending += chunk
            start = 0
            while (sep := pending.find(_SEPARATOR_BYTE, start)) >= 0:
                text = _decode_txt(bytes(pending[start:sep]))
                start = sep + 1
                if emitted or text.strip():
                    yield Piece(text, True)
                emitted = False
            del pending[:start]
            while len(pending) > piece_bytes:
                cuts = [m.end() for m in _CUT.finditer(pending, 0, piece_bytes)]
                head = _decode_txt(bytes(pending[: cuts[-1]])) if cuts else ""
                # A blank head stays with what follows: a document that turns out blank as a
                # whole is dropped, as it always was.
                if not cuts or (not emitted and not head.strip()):
                    break
                del pending[: cuts[-1]]
                yield Piece(head, False)
                emitted = True
            if not chunk:
                break
    text = _decode_txt(bytes(pending))
    if emitted or text.strip():
        yield Piece(text, True)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    # Text mode, as the file was always read (universal newlines, strict UTF-8), one line at a
    # time, so the file is never whole in memory.
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{lineno}: no {text_field!r} field")
            value = record[text_field]
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {text_field!r} is not a string")
            if value.strip():
                yield value


def hf_arrow_files(path: Path) -> list[Path]:
    """The Arrow files of a directory written by `datasets.Dataset.save_to_disk`, in order."""
    return sorted(path.glob("data-*.arrow")) or sorted(path.glob("*.arrow"))


def _hf_documents(path: Path, text_field: str) -> Iterator[str]:
    """Rows of a saved HF dataset (Arrow IPC stream files), one record batch at a time."""
    import pyarrow as pa  # imported here: only this format needs it

    files = hf_arrow_files(path)
    if not files:
        raise DataError(f"{path}: no .arrow files in the dataset directory")
    for file in files:
        with pa.memory_map(str(file)) as source:
            reader = pa.ipc.open_stream(source)
            names = reader.schema.names
            if text_field not in names:
                raise DataError(f"{file}: no column {text_field!r} (has {names})")
            column = names.index(text_field)
            for batch in reader:
                for value in batch.column(column).to_pylist():
                    if isinstance(value, str) and value:
                        yield value


def source_format(path: Path) -> str:
    """``txt``, ``jsonl`` or ``hf`` (a saved HF dataset directory) for a dataset path.

    Raises:
        DataError: the path names nothing, or nothing these formats cover.
    """
    if path.is_dir():
        if core_tokens.is_hf_dataset(path):
            return "hf"
        raise DataError(f"{path}: a directory but not a saved Hugging Face dataset")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return "jsonl"
    if suffix in {".txt", ".text", ".md", ".py", ""}:
        return "txt"
    raise DataError(
        f"{path}: unsupported format {suffix!r} (use .txt, .jsonl or an HF dataset dir)"
    )


def iter_pieces(
    path: Path, *, text_field: str = "text", piece_bytes: int = PIECE_BYTES
) -> Iterator[Piece]:
    """The documents of a dataset as a stream of pieces, holding at most one document (or one
    `piece_bytes` piece of a longer .txt document) in memory.

    A .txt document longer than `piece_bytes` comes in several pieces, cut after a newline
    followed by printable ASCII; joined, they are the document. JSONL records and HF rows are
    whole documents.
    """
    fmt = source_format(path)
    if fmt == "txt":
        yield from _txt_pieces(path, piece_bytes)
        return
    docs = _jsonl_documents(path, text_field) if fmt == "jsonl" else _hf_documents(path, text_field)
    for doc in docs:
        yield Piece(doc, True)


def iter_documents(path: Path, *, text_field: str = "text") -> Iterator[str]:
    """The documents of a .txt file, a JSONL file or a saved HF dataset directory, one at a
    time (a long .txt document is read in pieces and joined)."""
    parts: list[str] = []
    for piece in iter_pieces(path, text_field=text_field):
        parts.append(piece.text)
        if piece.end:
            yield "".join(parts)
            parts = []


def read_documents(path: Path, *, text_field: str = "text") -> list[str]:
    """Read the documents of a .txt file, a JSONL file or a saved HF dataset directory."""
    return list(iter_documents(path, text_field=text_field))


# --------------------------------------------------------------------------- tokenising


def tokenize_documents(docs: list[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Concatenate the documents' token ids, each followed by the EOS token, as one 1-D tensor."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; documents cannot be separated")
    chunks: list[torch.Tensor] = []
    for start in range(0, len(docs), _TOKENIZE_BATCH):
        batch = docs[start : start + _TOKENIZE_BATCH]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            chunks.append(torch.tensor([*ids, eos], dtype=torch.long))
    if not chunks:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chunks)


def pack(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into `[n, seq_len]` blocks, dropping the incomplete tail."""
    n = ids.numel() // seq_len
    return ids[: n * seq_len].reshape(n, seq_len).contiguous()


def load_blocks(
    path: Path, tokenizer: PreTrainedTokenizerBase, seq_len: int, *, text_field: str = "text"
) -> torch.Tensor:
    """Read, tokenise and pack one dataset into `[n, seq_len]` blocks."""
    docs = read_documents(path, text_field=text_field)
    if not docs:
        raise DataError(f"{path}: no text")
    return pack(tokenize_documents(docs, tokenizer), seq_len)


def fingerprint(eval_ids: torch.Tensor, seq_len: int) -> str:
    """Protocol string of an evaluation set: `eval:<sha256[:16]>:seq<L>:n<tokens>`.

    The hash covers the token ids as little-endian int64 in row order, so the same ids give
    the same protocol on any machine, and a different tokenizer, corpus or split does not.
    """
    flat = eval_ids.detach().to("cpu", torch.int64).contiguous().reshape(-1)
    digest = hashlib.sha256(flat.numpy().astype("<i8", copy=False).tobytes()).hexdigest()
    return f"eval:{digest[:16]}:seq{seq_len}:n{flat.numel()}"


def make_splits(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    *,
    text_field: str = "text",
    eval_path: Path | None = None,
    eval_tokens: int | None = None,
) -> Splits:
    """Training and held-out blocks of a dataset.

    Held-out set: the first `eval_tokens` worth of blocks of `eval_path` when one is given,
    else the LAST `eval_tokens` worth of the corpus's blocks, which are then never trained on.
    """
    if seq_len < 2:
        raise DataError("seq_len must be at least 2")
    blocks = load_blocks(path, tokenizer, seq_len, text_field=text_field)
    if eval_path is None:
        return split_blocks(blocks, eval_tokens=eval_tokens, source=str(path))
    n_eval = math.ceil((eval_tokens or default_eval_tokens(seq_len)) / seq_len)
    eval_blocks = load_blocks(eval_path, tokenizer, seq_len, text_field=text_field)[:n_eval]
    if eval_blocks.shape[0] == 0 or blocks.shape[0] == 0:
        raise DataError(f"{path} / {eval_path}: too little text for seq_len={seq_len}")
    return Splits(blocks, eval_blocks, seq_len, fingerprint(eval_blocks, seq_len))


def split_blocks(
    blocks: torch.Tensor, *, eval_tokens: int | None = None, source: str = "dataset"
) -> Splits:
    """Hold out the LAST `eval_tokens` worth of blocks; the rest is the training split."""
    seq_len = int(blocks.shape[1])
    n_eval = math.ceil((eval_tokens or default_eval_tokens(seq_len)) / seq_len)
    if blocks.shape[0] <= n_eval:
        raise DataError(
            f"{source}: {blocks.shape[0]} blocks of {seq_len} tokens, not enough for a "
            f"held-out set of {n_eval} blocks plus training data"
        )
    train, eval_blocks = blocks[:-n_eval], blocks[-n_eval:]
    return Splits(train, eval_blocks, seq_len, fingerprint(eval_blocks, seq_len))


def calibration_ids(train: torch.Tensor | BlockSource, n: int, *, seed: int) -> torch.Tensor:
    """`n` distinct training blocks (all of them when fewer), chosen by a seeded draw.

    The draw depends on the number of blocks only, so a tensor and the memory-mapped shards of
    the same blocks (a `BlockSource`) give the same calibration sequences.
    """
    n_blocks = int(train.shape[0]) if isinstance(train, torch.Tensor) else train.n_blocks
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_blocks, generator=gen)[: min(n, n_blocks)].sort().values
    return train[order] if isinstance(train, torch.Tensor) else train.take(order)


# --------------------------------------------------------------------------- batch stream


class BatchStream:
    """Deterministic, resumable order of training blocks.

    Epoch e visits the blocks in `randperm(n, seed + e)`; a batch that runs past the end of
    an epoch continues in the next one. The state is (epoch, cursor), so a resumed job
    reproduces exactly the batches an uninterrupted one would have drawn.
    """

    def __init__(self, n_blocks: int, batch_size: int, *, seed: int) -> None:
        if n_blocks < 1 or batch_size < 1:
            raise DataError("a batch stream needs at least one block and a batch size >= 1")
        self.n_blocks = n_blocks
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        # int32 halves the one array the order keeps per block (int64 gives the same sequence).
        dtype = torch.int32 if self.n_blocks < 2**31 else torch.int64
        return torch.randperm(self.n_blocks, generator=gen, dtype=dtype)

    def next_indices(self) -> torch.Tensor:
        """Indices of the next batch of blocks."""
        parts: list[torch.Tensor] = []
        need = self.batch_size
        while need:
            take = min(need, self.n_blocks - self.cursor)
            parts.append(self._perm[self.cursor : self.cursor + take])
            self.cursor += take
            need -= take
            if self.cursor == self.n_blocks:
                self.epoch += 1
                self.cursor = 0
                self._perm = self._permutation(self.epoch)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(torch.int64)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_indices()

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream: enough to resume it."""
        return {
            "n_blocks": self.n_blocks,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the stream must be over the same blocks and batch size."""
        if (state["n_blocks"], state["batch_size"], state["seed"]) != (
            self.n_blocks,
            self.batch_size,
            self.seed,
        ):
            raise DataError("the saved data cursor belongs to a different dataset or batch size")
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._perm = self._permutation(self.epoch)
