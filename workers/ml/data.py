"""Datasets for post-training jobs: read, tokenise, pack, split, fingerprint, stream.

A corpus is turned into one long token stream (EOS after every document) and cut into
`seq_len` blocks. The held-out evaluation set is fixed by the data alone (an explicit
`eval_path`, or the last blocks of the corpus), so every checkpoint of a run and L0 are
measured on the same token ids (docs/law.md §3); its fingerprint becomes the observation's
`protocol`. Training never sees an evaluation block; calibration sequences for pruning
come from the training blocks only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

# Plain-text files may hold several documents separated by this character (ASCII record
# separator, which ordinary text never contains); a file without it is one document.
DOC_SEPARATOR = "\x1e"

# Documents tokenised per call: the fast tokenizer parallelises inside a batch, and a bounded
# batch keeps peak memory at a few copies of the batch's text.
_TOKENIZE_BATCH = 256


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
    return 16 * seq_len * 8


# --------------------------------------------------------------------------- reading


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [doc for doc in text.split(DOC_SEPARATOR) if doc.strip()]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs: list[str] = []
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
                docs.append(value)
    return docs


def _read_hf_dir(path: Path, text_field: str) -> list[str]:
    """Read a directory written by `datasets.Dataset.save_to_disk` (Arrow IPC stream files)."""
    import pyarrow as pa  # imported here: only this format needs it

    files = sorted(path.glob("data-*.arrow")) or sorted(path.glob("*.arrow"))
    if not files:
        raise DataError(f"{path}: no .arrow files in the dataset directory")
    docs: list[str] = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            table = pa.ipc.open_stream(source).read_all()
        if text_field not in table.column_names:
            raise DataError(f"{file}: no column {text_field!r} (has {table.column_names})")
        docs.extend(v for v in table.column(text_field).to_pylist() if isinstance(v, str) and v)
    return docs


def read_documents(path: Path, *, text_field: str = "text") -> list[str]:
    """Read the documents of a .txt file, a JSONL file or a saved HF dataset directory."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or any(path.glob("*.arrow")):
            return _read_hf_dir(path, text_field)
        raise DataError(f"{path}: a directory but not a saved Hugging Face dataset")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return _read_jsonl(path, text_field)
    if suffix in {".txt", ".text", ".md", ".py", ""}:
        return _read_txt(path)
    raise DataError(
        f"{path}: unsupported format {suffix!r} (use .txt, .jsonl or an HF dataset dir)"
    )


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


def calibration_ids(train: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
    """`n` distinct training blocks (all of them when fewer), chosen by a seeded draw."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(train.shape[0], generator=gen)[: min(n, train.shape[0])]
    return train[order.sort().values]


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
        return torch.randperm(self.n_blocks, generator=gen)

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
        return parts[0] if len(parts) == 1 else torch.cat(parts)

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
