"""How documents become ids: an :class:`Encoder`, long documents cut where the tokenizer itself
agrees, and batches encoding on the tokenizer's threads while the next ones are read.

Documents stream in as ``workers.ml.data.Piece`` s; :func:`units` turns them into the texts
encoded in one piece each (a long .txt document in several, only where the cut is safe), and
:func:`encoded` hands them to the encoder in batches of about ``batch_chars`` characters, with
``IN_FLIGHT`` batches encoding at once, and gives back each batch with its ids, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from app.core.tokens import TokenDtype
from workers.ml.data import DataError, Piece

#: Characters per encode call: large enough that the tokenizer's threads share the work evenly
#: (on 2 cores 1 MiB encodes as fast as 4 MiB), small enough that what the tokenizer allocates
#: for a batch (about 100 bytes a character at its peak) stays near 100 MB.
BATCH_CHARS = 1 << 20
#: Batches encoding at once (see :func:`encoded`).
IN_FLIGHT = 2
#: Characters on each side of a cut inside a long document that the tokenizer checks.
CUT_WINDOW = 4096
#: The numpy type of each token dtype of a token directory (little-endian, as on disk).
NP_DTYPES: dict[TokenDtype, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


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
class Unit:
    """Text encoded in one piece; ``start``/``end``: it begins/ends a document."""

    text: str
    start: bool
    end: bool


def cut_is_safe(encoder: Encoder, left: str, right: str) -> bool:
    """Whether the text ``left + right`` may be encoded as its two sides apart: the tokenizer's
    own verdict, around the cut, that the two sides encoded apart give the ids of the whole. A
    tokenizer that treats the start of a text specially (a prefix space, say) fails it."""
    a, b = left[-CUT_WINDOW:], right[:CUT_WINDOW]
    whole, first, second = encoder.encode([a + b, a, b])
    return whole == first + second


def units(pieces: Iterable[Piece], encoder: Encoder) -> Iterator[Unit]:
    """Documents, a long .txt document in pieces where its cuts are safe (else joined)."""
    held: str | None = None  # a piece of the current document, waiting for the next one
    started = False  # a unit of the current document went out already
    for piece in pieces:
        text = piece.text
        if held is not None:
            if cut_is_safe(encoder, held, text):
                yield Unit(held, not started, False)
                started = True
            else:
                text = held + text
            held = None
        if piece.end:
            yield Unit(text, not started, True)
            started = False
        else:
            held = text


def batches(items: Iterable[Unit], batch_chars: int) -> Iterator[list[Unit]]:
    """``items`` in lists of at least ``batch_chars`` characters (the last one shorter)."""
    batch: list[Unit] = []
    size = 0
    for unit in items:
        batch.append(unit)
        size += len(unit.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded(
    items: Iterable[Unit], encoder: Encoder, batch_chars: int
) -> Iterator[tuple[list[Unit], list[list[int]]]]:
    """Batches of units with their ids, in order, with ``IN_FLIGHT`` batches encoding at once.

    The tokenizer releases the GIL while it encodes, so reading the source, converting ids and
    writing shards overlap with it instead of adding to it; and with a second batch already
    encoding, the tokenizer's threads that finish their share of one batch early take up the
    next instead of waiting for the last long document of the first.
    """
    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="encode") as pool:
        pending: deque[tuple[list[Unit], Future[list[list[int]]]]] = deque()
        for batch in batches(items, batch_chars):
            pending.append((batch, pool.submit(encoder.encode, [u.text for u in batch])))
            if len(pending) >= IN_FLIGHT:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
