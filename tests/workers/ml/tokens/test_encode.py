"""How documents become ids: a long document encoded in pieces only where the tokenizer agrees,
and batches of about a given size."""

from __future__ import annotations

from pathlib import Path

from tests.workers.ml.pipeline_helpers import small_docs
from tests.workers.ml.tokens.conftest import Assets
from tests.workers.ml.tokens.helpers import tokenize
from workers.ml import data
from workers.ml.corpus import write_corpus
from workers.ml.data import Piece
from workers.ml.tokens.encode import Encoder, Unit, batches, cut_is_safe, units
from workers.ml.tokens.read import TokenStore


def _chars(prefix: str = "") -> Encoder:
    """An encoder of characters; with ``prefix``, one that marks the start of every text (as a
    tokenizer that adds a prefix space does)."""

    def encode(texts: list[str]) -> list[list[int]]:
        return [[ord(c) for c in prefix + text] for text in texts]

    return Encoder(encode, eos_id=0, eos_token="\0", vocab_size=1 << 16)


def test_a_document_is_cut_only_where_the_encoder_gives_the_ids_of_the_whole() -> None:
    pieces = [Piece("first half\n", False), Piece("second half", True), Piece("next", True)]
    assert cut_is_safe(_chars(), "a\n", "b") and not cut_is_safe(_chars(" "), "a\n", "b")
    assert list(units(pieces, _chars())) == [
        Unit("first half\n", start=True, end=False),
        Unit("second half", start=False, end=True),
        Unit("next", start=True, end=True),
    ]
    assert list(units(pieces, _chars(" "))) == [
        Unit("first half\nsecond half", start=True, end=True),
        Unit("next", start=True, end=True),
    ]


def test_batches_hold_at_least_batch_chars_characters_but_the_last() -> None:
    items = [Unit("x" * n, start=True, end=True) for n in (3, 4, 5, 1, 1)]
    sizes = [[len(u.text) for u in batch] for batch in batches(items, 6)]
    assert sizes == [[3, 4], [5, 1], [1]]


def test_document_boundaries_are_the_offsets_even_for_a_document_read_in_pieces(
    assets: Assets, tmp_path: Path
) -> None:
    _model_dir, _corpus, tok = assets
    docs = small_docs(60_000)
    long_doc = "\n".join(docs)  # one document of ~60 kB, cut into ~2 kB pieces on the way
    corpus = write_corpus(tmp_path / "c.txt", docs=[*docs, "x = 1\n", long_doc])
    pieces = list(data.iter_pieces(corpus, piece_bytes=2000))
    assert sum(not p.end for p in pieces) > 10  # the long document did come in pieces
    manifest = tokenize(corpus, tmp_path / "ds", tok, piece_bytes=2000, heldout=100)

    documents = data.read_documents(corpus)
    assert documents[-1] == long_doc and manifest.n_documents == len(docs) + 2
    store = TokenStore(manifest)
    offsets = store.offsets().tolist()
    assert offsets[0] == 0 and offsets[-1] == manifest.n_tokens
    for i, doc in enumerate(documents):
        ids = store.read(offsets[i], offsets[i + 1]).tolist()
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        # Pieces are encoded apart only where the tokenizer gives the ids of the whole.
        assert ids[:-1] == tok(doc, add_special_tokens=False)["input_ids"]
