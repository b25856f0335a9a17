"""Tokenised datasets, the parts the API and the worker share: tokenizer fingerprints, the
manifest of a token directory, and how a job splits it. Standard library only (no torch, no
transformers, no numpy), so the API can check a job at submission without loading a model.

A token directory (written by ``p2law tokenize`` or by the worker's raw-text cache,
``workers/ml/tokenized.py``) holds:

- ``tokens-NNNNN.bin``: the token stream, every document followed by the EOS id, as raw
  little-endian ``uint16`` (vocabularies of at most 65,536 ids) or ``uint32``, cut into shards of
  ``shard_tokens`` tokens (the last one shorter);
- ``offsets.bin``: little-endian ``int64``, the start of every document in the stream and, last,
  the stream's length (``documents + 1`` entries);
- ``manifest.json``: written last, so a directory without one is unfinished.

The held-out evaluation set of a job is fixed by the manifest (docs/law.md §3):

- ``"range"`` (``p2law tokenize``): a token range at the end of the stream, starting at a
  document boundary when one exists, never trained on; a job's evaluation blocks are the first
  ``ceil(eval_tokens / seq_len)`` blocks of it, its training blocks are packed from the tokens
  before it;
- ``"tail"`` (the cache of a raw-text job): the raw-text rule, the last
  ``ceil(eval_tokens / seq_len)`` blocks of the whole stream packed at the job's ``seq_len``, so a
  raw-text job gets the same blocks, and the same ``protocol``, whether or not it went through
  the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
FORMAT = "p2law-tokens"
VERSION = 1
OFFSETS = "offsets.bin"
SHARD_NAME = re.compile(r"\Atokens-\d{5}\.bin\Z")
ITEM_BYTES = {"uint16": 2, "uint32": 4}
#: The largest vocabulary whose ids fit in uint16.
UINT16_VOCAB = 1 << 16
#: Sequences in a job's held-out set when ``dataset.eval_tokens`` is not given.
DEFAULT_EVAL_SEQUENCES = 128

HeldoutKind = Literal["range", "tail"]


class ManifestError(ValueError):
    """A token directory whose manifest is missing, malformed or disagrees with its files."""


class TokenizerFilesError(ValueError):
    """A model directory without tokenizer files to fingerprint."""


class SplitError(ValueError):
    """A tokenised dataset too small for the split a job asks for."""


def default_eval_tokens(seq_len: int) -> int:
    """Size of a job's held-out set when it does not choose one: 128 sequences."""
    return DEFAULT_EVAL_SEQUENCES * seq_len


def token_dtype(vocab_size: int) -> str:
    """``uint16`` when every id of a ``vocab_size`` vocabulary fits in it, else ``uint32``."""
    if vocab_size < 1:
        raise ValueError("a vocabulary has at least one token")
    return "uint16" if vocab_size <= UINT16_VOCAB else "uint32"


# --------------------------------------------------------------------------- fingerprints

#: The sections of tokenizer.json that decide the ids of ``encode(text, add_special_tokens=
#: False)``, which is how jobs tokenise. The decoder, the post-processor (special tokens added
#: around a sequence), truncation and padding do not change those ids, and transformers rewrites
#: some of them when it saves a tokenizer again, so they are left out.
_ID_SECTIONS = ("added_tokens", "normalizer", "pre_tokenizer", "model")
#: Fields of the BPE/WordPiece model that one writer saves as null and another as "" (the same
#: meaning: no prefix/suffix); both are dropped.
_EMPTY_EQUALS_NULL = ("continuing_subword_prefix", "end_of_word_suffix")
#: Tokenizer files besides tokenizer.json whose bytes decide the ids when they are present.
_OTHER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
_SPECIAL = ("eos_token", "bos_token", "unk_token", "pad_token")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def canonical_tokenizer_json(document: dict[str, Any]) -> dict[str, Any]:
    """The id-deciding sections of a parsed tokenizer.json, in a form that does not depend on
    which library version wrote it (nulls dropped, an empty prefix/suffix equal to none)."""
    out = {key: _drop_nulls(document.get(key)) for key in _ID_SECTIONS}
    model = out.get("model")
    if isinstance(model, dict):
        for key in _EMPTY_EQUALS_NULL:
            if model.get(key) == "":
                model.pop(key)
    return out


def special_tokens(model_dir: Path) -> dict[str, str | None]:
    """The special tokens of a model directory (tokenizer_config.json, else
    special_tokens_map.json), by name."""
    config = _read_json_object(model_dir / "tokenizer_config.json")
    mapping = _read_json_object(model_dir / "special_tokens_map.json")
    return {
        name: _token_text(config.get(name)) or _token_text(mapping.get(name)) for name in _SPECIAL
    }


def _file_signature(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def tokenizer_fingerprint(model_dir: Path) -> str:
    """Fingerprint of the tokenizer a model directory holds: ``tok1:<32 hex digits>``.

    The SHA-256 of the canonical id-deciding sections of tokenizer.json (or the bytes of the
    other tokenizer files when there is none) and of the EOS token, which every document is
    followed by. Two directories get the same fingerprint exactly when they tokenise text the
    same way, whoever saved them (a pruned model saved by a job keeps its dense model's
    fingerprint). Computed from the files alone, so the API needs neither torch nor
    transformers.

    Raises:
        TokenizerFilesError: the directory has no tokenizer file.
    """
    model_dir = Path(model_dir)
    files = [model_dir / "tokenizer.json", *(model_dir / name for name in _OTHER_FILES)]
    present = [path for path in files if path.is_file()]
    if not present:
        raise TokenizerFilesError(
            f"{model_dir} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json)"
        )
    configs = [model_dir / "tokenizer_config.json", model_dir / "special_tokens_map.json"]
    signature = tuple(_file_signature(p) for p in [*present, *configs] if p.is_file())
    return _fingerprint_cached(signature)


@lru_cache(maxsize=64)
def _fingerprint_cached(signature: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by (path, size, mtime) of every file read: a submission does not parse a
    # multi-megabyte tokenizer.json again while the files stay the same.
    parts: dict[str, Any] = {}
    model_dir: Path | None = None
    for name, _size, _mtime in signature:
        path = Path(name)
        model_dir = path.parent
        if path.name == "tokenizer.json":
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TokenizerFilesError(f"{path} is not readable JSON: {exc}") from None
            if not isinstance(document, dict):
                raise TokenizerFilesError(f"{path} is not a tokenizer (not a JSON object)")
            parts["tokenizer.json"] = canonical_tokenizer_json(document)
        elif path.name in _OTHER_FILES:
            parts[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_dir is not None
    parts["eos_token"] = special_tokens(model_dir)["eos_token"]
    return "tok1:" + hashlib.sha256(_canonical(parts)).hexdigest()[:32]


def clear_fingerprint_cache() -> None:
    """Forget cached fingerprints (tests that rewrite files within one mtime tick)."""
    _fingerprint_cached.cache_clear()


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Shard:
    """One file of the token stream."""

    file: str
    tokens: int


@dataclass(frozen=True)
class Heldout:
    """The held-out split of a token directory (see the module docstring)."""

    kind: HeldoutKind
    start: int  # first held-out token ("range"); the stream's length for "tail"
    end: int


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json of the token directory ``root``."""

    root: Path
    tokenizer_fingerprint: str
    tokenizer_model: str
    vocab_size: int
    eos_id: int
    dtype: str
    n_tokens: int
    n_documents: int
    shard_tokens: int
    shards: tuple[Shard, ...]
    heldout: Heldout
    source: dict[str, Any]
    raw: dict[str, Any]

    @property
    def item_bytes(self) -> int:
        """Bytes per token in the shards."""
        return ITEM_BYTES[self.dtype]


def is_token_dir(path: Path) -> bool:
    """Whether ``path`` is meant as a token directory: it has a manifest, or is unfinished."""
    return path.is_dir() and (
        (path / MANIFEST).exists() or (path / "progress.json").exists() or (path / OFFSETS).exists()
    )


def _need(condition: bool, root: Path, message: str) -> None:
    if not condition:
        raise ManifestError(f"{root}: {message}")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_manifest(root: Path, *, check_files: bool = True) -> Manifest:
    """Read and check the manifest of the token directory ``root``.

    Checks the format and version, the types and the arithmetic (shard sizes add up to the
    token count, the held-out split lies inside the stream), and with ``check_files`` that
    every shard and the offsets file exist with the size the manifest implies (``stat`` only).

    Raises:
        ManifestError: with what is wrong, in words.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        unfinished = (root / "progress.json").exists()
        raise ManifestError(
            f"{root}: no {MANIFEST}"
            + (
                " (tokenising did not finish; run `p2law tokenize` again to resume it)"
                if unfinished
                else " (not a tokenised dataset: run `p2law tokenize` to make one)"
            )
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from None
    _need(isinstance(doc, dict), root, f"{MANIFEST} is not a JSON object")
    _need(doc.get("format") == FORMAT, root, f"{MANIFEST} is not a {FORMAT!r} manifest")
    _need(
        doc.get("version") == VERSION,
        root,
        f"manifest version {doc.get('version')!r}, this server reads version {VERSION}",
    )
    tok = doc.get("tokenizer")
    _need(isinstance(tok, dict), root, "no tokenizer section")
    assert isinstance(tok, dict)
    fingerprint = tok.get("fingerprint")
    _need(
        isinstance(fingerprint, str) and fingerprint.startswith("tok1:"),
        root,
        "no tokenizer fingerprint",
    )
    _need(_int(tok.get("vocab_size")) and tok["vocab_size"] > 0, root, "bad vocab_size")
    _need(_int(tok.get("eos_id")), root, "bad eos_id")
    dtype = doc.get("dtype")
    _need(dtype in ITEM_BYTES, root, f"dtype {dtype!r} is not one of {sorted(ITEM_BYTES)}")
    assert isinstance(dtype, str)
    _need(
        token_dtype(int(tok["vocab_size"])) == dtype or dtype == "uint32",
        root,
        f"vocab_size {tok['vocab_size']} does not fit in {dtype}",
    )
    counts = doc.get("counts")
    _need(isinstance(counts, dict), root, "no counts section")
    assert isinstance(counts, dict)
    for key in ("documents", "tokens", "shards"):
        _need(_int(counts.get(key)), root, f"counts.{key} is not a count")
    _need(counts["tokens"] > 0, root, "the token stream is empty")
    shard_tokens = doc.get("shard_tokens")
    _need(_int(shard_tokens) and shard_tokens > 0, root, "bad shard_tokens")
    assert isinstance(shard_tokens, int)
    raw_shards = doc.get("shards")
    _need(isinstance(raw_shards, list), root, "no shard list")
    assert isinstance(raw_shards, list)
    shards: list[Shard] = []
    for i, item in enumerate(raw_shards):
        _need(
            isinstance(item, dict)
            and isinstance(item.get("file"), str)
            and SHARD_NAME.match(item["file"]) is not None
            and _int(item.get("tokens")),
            root,
            f"shard {i} is malformed",
        )
        shards.append(Shard(item["file"], int(item["tokens"])))
    _need(len(shards) == counts["shards"], root, "counts.shards disagrees with the shard list")
    _need(
        sum(s.tokens for s in shards) == counts["tokens"],
        root,
        "the shards' tokens do not add up to counts.tokens",
    )
    # Fixed-size shards: a token's shard is its position // shard_tokens (the reader relies on it).
    _need(
        all(s.tokens == shard_tokens for s in shards[:-1])
        and 0 < shards[-1].tokens <= shard_tokens,
        root,
        "every shard but the last must hold shard_tokens tokens",
    )
    heldout_doc = doc.get("heldout")
    _need(isinstance(heldout_doc, dict), root, "no heldout section")
    assert isinstance(heldout_doc, dict)
    kind = heldout_doc.get("kind")
    n_tokens = int(counts["tokens"])
    if kind == "range":
        start, end = heldout_doc.get("start"), heldout_doc.get("end")
        _need(
            _int(start) and _int(end) and 0 < start < end == n_tokens,  # type: ignore[operator]
            root,
            "the held-out range must be [start, tokens) with 0 < start",
        )
        heldout = Heldout("range", int(start), int(end))  # type: ignore[arg-type]
    elif kind == "tail":
        heldout = Heldout("tail", n_tokens, n_tokens)
    else:
        raise ManifestError(f"{root}: heldout.kind {kind!r} is not 'range' or 'tail'")
    manifest = Manifest(
        root=root,
        tokenizer_fingerprint=str(fingerprint),
        tokenizer_model=str(tok.get("model", "")),
        vocab_size=int(tok["vocab_size"]),
        eos_id=int(tok["eos_id"]),
        dtype=dtype,
        n_tokens=n_tokens,
        n_documents=int(counts["documents"]),
        shard_tokens=shard_tokens,
        shards=tuple(shards),
        heldout=heldout,
        source=dict(doc.get("source") or {}),
        raw=doc,
    )
    if check_files:
        for shard in shards:
            _need_size(root / shard.file, shard.tokens * manifest.item_bytes, root)
        _need_size(root / OFFSETS, (manifest.n_documents + 1) * 8, root)
    return manifest


def _need_size(path: Path, size: int, root: Path) -> None:
    try:
        actual = os.stat(path).st_size
    except OSError:
        raise ManifestError(f"{root}: {path.name} is missing") from None
    _need(actual == size, root, f"{path.name} has {actual} bytes, the manifest says {size}")


# --------------------------------------------------------------------------- a job's split


@dataclass(frozen=True)
class SplitPlan:
    """Where a job's blocks lie in the token stream: ``n_train`` blocks of ``seq_len`` from
    ``train_start``, ``n_eval`` held-out blocks from ``eval_start``."""

    seq_len: int
    train_start: int
    n_train: int
    eval_start: int
    n_eval: int


def plan_split(manifest: Manifest, seq_len: int, eval_tokens: int | None) -> SplitPlan:
    """The blocks a job with this ``seq_len`` and ``eval_tokens`` trains and evaluates on.

    Raises:
        SplitError: the stream is too small for it (the message gives the sizes).
    """
    if seq_len < 2:
        raise SplitError("seq_len must be at least 2")
    n_eval = math.ceil((eval_tokens or default_eval_tokens(seq_len)) / seq_len)
    where = str(manifest.root)
    if manifest.heldout.kind == "tail":
        n_blocks = manifest.n_tokens // seq_len
        if n_blocks <= n_eval:
            raise SplitError(
                f"{where}: {n_blocks} blocks of {seq_len} tokens, not enough for a held-out set "
                f"of {n_eval} blocks plus training data"
            )
        return SplitPlan(seq_len, 0, n_blocks - n_eval, (n_blocks - n_eval) * seq_len, n_eval)
    start, end = manifest.heldout.start, manifest.heldout.end
    available = (end - start) // seq_len
    if n_eval > available:
        raise SplitError(
            f"{where}: the held-out range holds {end - start} tokens ({available} blocks of "
            f"{seq_len}); the job asks for {n_eval} blocks ({n_eval * seq_len} tokens); "
            "give a smaller dataset.eval_tokens or tokenise with a larger --heldout-tokens"
        )
    n_train = start // seq_len
    if n_train < 1:
        raise SplitError(f"{where}: fewer than {seq_len} tokens before the held-out range")
    return SplitPlan(seq_len, 0, n_train, start, n_eval)
