"""Reading token directories: a job's training blocks as a ``BlockSource`` on memory maps.

:class:`TokenStore` reads a finished directory's stream through memory maps of its shards;
:class:`MemmapBlocks` gives a job its training blocks as a ``workers.ml.data.BlockSource``: a
batch is copied out of the memory map into an int64 tensor of the batch's size.
:func:`job_splits` is the pipeline's entry point: a token directory is checked by the rules the
API applied at submission (``app.core.tokens.check_job_dataset``) and read as it is (its
manifest's held-out range is the evaluation set); raw text is tokenised once into a cache
directory keyed by the source's and the tokenizer's fingerprints, and split by the raw-text
rule, so its blocks and ``protocol`` are the ones ``data.make_splits`` gives.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from app.core import tokens as core
from workers.ml.data import DataError, default_eval_tokens, fingerprint
from workers.ml.tokens.encode import NP_DTYPES
from workers.ml.tokens.fingerprint import model_fingerprint, source_fingerprint
from workers.ml.tokens.write import TEXT_FIELD, tokenize_to_dir


class TokenStore:
    """The token stream of a finished directory, read through memory maps of its shards."""

    def __init__(self, manifest: core.Manifest) -> None:
        self.manifest = manifest
        self.np_dtype = NP_DTYPES[manifest.dtype]
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


def _splits(
    manifest: core.Manifest, plan: core.SplitPlan, eval_blocks: torch.Tensor | None = None
) -> JobSplits:
    store = TokenStore(manifest)
    train = MemmapBlocks(store, plan.train_start, plan.n_train, plan.seq_len)
    if eval_blocks is None:
        eval_blocks = MemmapBlocks(store, plan.eval_start, plan.n_eval, plan.seq_len).all()
    protocol = fingerprint(eval_blocks, plan.seq_len)
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
    text_field: str = TEXT_FIELD,
    eval_path: Path | None = None,
    eval_tokens: int | None = None,
    cache_root: Path | None = None,
) -> JobSplits:
    """A job's training and held-out blocks, read from token shards.

    ``path`` a token directory: it must meet ``app.core.tokens.check_job_dataset``'s rules (the
    API's at submission: its manifest carries ``model``'s tokenizer fingerprint, no
    ``eval_path``, room for the split), and its held-out range gives the evaluation blocks. Raw
    text: tokenised once into ``cache_root`` (default :func:`default_cache_root`) and split as
    ``data.make_splits`` splits it — the same blocks, the same ``protocol``.
    """
    if seq_len < 2:
        raise DataError("seq_len must be at least 2")
    try:
        checked = core.check_job_dataset(
            path, model, seq_len=seq_len, eval_tokens=eval_tokens, eval_path=eval_path
        )
    except core.DatasetError as exc:
        raise DataError(str(exc)) from None
    if checked is not None:
        manifest, plan = checked
        if tokenizer.eos_token_id != manifest.eos_id:
            raise DataError(
                f"{path}: EOS id {manifest.eos_id} in the manifest, the tokenizer of {model} "
                f"has {tokenizer.eos_token_id}"
            )
        return _splits(manifest, plan)
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
    n_eval = math.ceil((eval_tokens or default_eval_tokens(seq_len)) / seq_len)
    n_eval = min(n_eval, eval_manifest.n_tokens // seq_len)
    n_train = manifest.n_tokens // seq_len
    if n_eval == 0 or n_train == 0:
        raise DataError(f"{path} / {eval_path}: too little text for seq_len={seq_len}")
    eval_blocks = MemmapBlocks(TokenStore(eval_manifest), 0, n_eval, seq_len).all()
    return _splits(manifest, core.SplitPlan(seq_len, 0, n_train, 0, n_eval), eval_blocks)
