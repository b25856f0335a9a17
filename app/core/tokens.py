"""Tokenised datasets, the parts the API and the worker share: tokenizer fingerprints, the
manifest of a token directory (one typed model, written by the worker and read back by both),
how a job splits it, and the rules a job's dataset must meet. No torch, transformers or numpy,
so the API can check a job at submission without loading a model.

A token directory (written by ``p2law tokenize`` or by the worker's raw-text cache,
``workers/ml/tokens/write.py``) holds:

- ``tokens-NNNNN.bin``: the token stream, every document followed by the EOS id, as raw
  little-endian ``uint16`` (vocabularies of at most 65,536 ids) or ``uint32``, cut into shards of
  ``shard_tokens`` tokens (the last one shorter);
- ``offsets.bin``: little-endian ``int64``, the start of every document in the stream and, last,
  the stream's length (``documents + 1`` entries);
- ``progress.json`` while it is being written (:class:`Progress`: where a killed run continues);
- ``manifest.json`` (:class:`Manifest`): written last, so a directory without one is unfinished.

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
from typing import Annotated, Any, ClassVar, Final, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FORMAT: Final = "p2law-tokens"
VERSION: Final = 1
OFFSETS = "offsets.bin"
#: A shard's file name (:func:`shard_name`), matched whole.
SHARD_NAME = re.compile(r"tokens-\d{5}\.bin")
TokenDtype = Literal["uint16", "uint32"]
ITEM_BYTES: dict[TokenDtype, int] = {"uint16": 2, "uint32": 4}
#: The largest vocabulary whose ids fit in uint16.
UINT16_VOCAB = 1 << 16
#: Sequences in a job's held-out set when ``dataset.eval_tokens`` is not given.
DEFAULT_EVAL_SEQUENCES = 128
#: What the held-out split of each kind is, as the manifest says it.
RANGE_RULE = "the last documents holding at least the requested tokens; never trained on"
TAIL_RULE = "the last eval_tokens of seq_len blocks, as raw text"
#: Where the stream's EOS ids are and what offsets.bin holds, as the manifest says it.
EOS_PLACEMENT = "after every document: doc0 EOS doc1 EOS ..."
OFFSETS_MEANING = "start of every document in the stream, then the stream's length"
#: How ``p2law tokenize`` is named in messages that tell the user to run it.
TOKENIZE_COMMAND = "p2law tokenize SOURCE --model MODEL --name NAME"

HeldoutKind = Literal["range", "tail"]
#: The held-out split a writer is asked for: ``"tail"``, a number of tokens, or the default.
HeldoutRequest = Literal["tail"] | int | None


class ManifestError(ValueError):
    """A token directory whose manifest is missing, malformed or disagrees with its files."""


class TokenizerFilesError(ValueError):
    """A model directory without tokenizer files to fingerprint."""


class SplitError(ValueError):
    """A tokenised dataset too small for the split a job asks for."""


class DatasetError(ValueError):
    """A job's dataset the job cannot use; the message says which dataset, which model and why."""


def default_eval_tokens(seq_len: int) -> int:
    """Size of a job's held-out set when it does not choose one: 128 sequences."""
    return DEFAULT_EVAL_SEQUENCES * seq_len


def token_dtype(vocab_size: int) -> TokenDtype:
    """``uint16`` when every id of a ``vocab_size`` vocabulary fits in it, else ``uint32``."""
    if vocab_size < 1:
        raise ValueError("a vocabulary has at least one token")
    return "uint16" if vocab_size <= UINT16_VOCAB else "uint32"


def shard_name(index: int) -> str:
    """The file name of shard ``index``."""
    return f"tokens-{index:05d}.bin"


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
class Invalid:
    """What :func:`read_manifest` says when a field is missing, of the wrong type or out of range
    (checks that raise ``ValueError`` say it themselves): ``{name}`` is the field's name,
    ``{index}`` the position of its item in a list, ``{value!r}`` what the file holds there."""

    message: str


Count = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[int, Field(strict=True, gt=0)]
_NOT_A_COUNT = Invalid("counts.{name} is not a count")
_BAD = Invalid("bad {name}")
_SHARD_MALFORMED = "shard {index} is malformed"
_HELDOUT_RANGE = "the held-out range must be [start, tokens) with 0 < start"
_FORMAT_MESSAGE = f"{MANIFEST} is not a {FORMAT!r} manifest"
_VERSION_MESSAGE = f"manifest version {{value!r}}, this server reads version {VERSION}"


def _exactly(expected: object, message: str) -> BeforeValidator:
    """A field that must hold ``expected`` (compared as JSON values are), else ``message``."""

    def check(value: object) -> object:
        if value != expected:
            raise ValueError(message.format(value=value))
        return value

    return BeforeValidator(check)


class _Section(BaseModel):
    """A part of a token directory's JSON files; keys it does not know are ignored."""

    model_config = ConfigDict(frozen=True)
    #: What read_manifest says when the whole section is missing or is not an object.
    INVALID: ClassVar[str | None] = None


class Shard(_Section):
    """One file of the token stream."""

    INVALID: ClassVar[str | None] = _SHARD_MALFORMED
    file: Annotated[str, Field(pattern=f"^{SHARD_NAME.pattern}$"), Invalid(_SHARD_MALFORMED)]
    tokens: Annotated[Count, Invalid(_SHARD_MALFORMED)]


class TokenizerInfo(_Section):
    """The tokenizer that made the ids; ``model``: where it was read from (for messages)."""

    INVALID: ClassVar[str | None] = "no tokenizer section"
    fingerprint: Annotated[str, Field(pattern="^tok1:"), Invalid("no tokenizer fingerprint")]
    model: str = ""
    vocab_size: Annotated[Positive, _BAD]
    eos_id: Annotated[Count, _BAD]
    eos_token: str | None = None


class SourceInfo(_Section):
    """The text that was tokenised (``text_field``: None for a .txt file)."""

    path: str
    format: str
    text_field: str | None
    fingerprint: str
    bytes: Count


class EosInfo(_Section):
    """The id every document is followed by."""

    id: Count
    token: str
    placement: str = EOS_PLACEMENT


class Counts(_Section):
    """How much the directory holds."""

    INVALID: ClassVar[str | None] = "no counts section"
    documents: Annotated[Count, _NOT_A_COUNT]
    tokens: Annotated[Count, _NOT_A_COUNT]
    shards: Annotated[Count, _NOT_A_COUNT]

    @model_validator(mode="after")
    def _not_empty(self) -> Counts:
        if self.tokens == 0:
            raise ValueError("the token stream is empty")
        return self


class OffsetsInfo(_Section):
    """What offsets.bin holds."""

    file: str = OFFSETS
    dtype: str = "int64"
    entries: Count
    meaning: str = OFFSETS_MEANING


class Heldout(_Section):
    """The held-out split of a token directory (see the module docstring): for ``"range"`` the
    tokens ``[start, end)``; a range that starts at a document boundary names its first document
    and how many there are. ``"tail"`` has no range of its own (it depends on the job)."""

    INVALID: ClassVar[str | None] = "no heldout section"
    kind: Annotated[HeldoutKind, Invalid("heldout.kind {value!r} is not 'range' or 'tail'")]
    start: Annotated[Count | None, Invalid(_HELDOUT_RANGE)] = None
    end: Annotated[Count | None, Invalid(_HELDOUT_RANGE)] = None
    tokens: Count | None = None
    document_aligned: bool | None = None
    rule: str | None = None
    first_document: Count | None = None
    documents: Count | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A tail has only a kind and a rule; a range cut inside its first document names none.
        return {key: value for key, value in handler(self).items() if value is not None}


class TokenizeSettings(_Section):
    """What a directory is made from and how: a finished directory with the same settings is
    returned as it is, an interrupted one with the same settings is continued."""

    source: str
    tokenizer: str
    text_field: str
    dtype: TokenDtype
    eos_id: int
    shard_tokens: int
    heldout: HeldoutRequest


class Manifest(_Section):
    """``manifest.json`` of a token directory: the writer builds it, :func:`read_manifest`
    reads it back and checks it (the API at submission, the worker when a job opens it).

    The fields are the file's keys; ``root`` is the directory it was read from.
    """

    format: Annotated[str, _exactly(FORMAT, _FORMAT_MESSAGE), Invalid(_FORMAT_MESSAGE)]
    version: Annotated[int, _exactly(VERSION, _VERSION_MESSAGE), Invalid(_VERSION_MESSAGE)]
    created_at: str | None = None
    tokenizer: TokenizerInfo
    source: SourceInfo | None = None
    dtype: Annotated[TokenDtype, Invalid(f"dtype {{value!r}} is not one of {sorted(ITEM_BYTES)}")]
    byte_order: str = "little"
    eos: EosInfo | None = None
    counts: Counts
    shard_tokens: Annotated[Positive, _BAD]
    shards: Annotated[tuple[Shard, ...], Invalid("no shard list")]
    offsets: OffsetsInfo | None = None
    heldout: Heldout
    settings: TokenizeSettings | None = None

    _root: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        vocab = self.tokenizer.vocab_size
        if token_dtype(vocab) != self.dtype and self.dtype != "uint32":
            raise ValueError(f"vocab_size {vocab} does not fit in {self.dtype}")
        if len(self.shards) != self.counts.shards:
            raise ValueError("counts.shards disagrees with the shard list")
        if sum(s.tokens for s in self.shards) != self.counts.tokens:
            raise ValueError("the shards' tokens do not add up to counts.tokens")
        # Fixed-size shards: a token's shard is its position // shard_tokens (the reader relies
        # on it).
        size = self.shard_tokens
        if not (
            all(s.tokens == size for s in self.shards[:-1]) and 0 < self.shards[-1].tokens <= size
        ):
            raise ValueError("every shard but the last must hold shard_tokens tokens")
        held = self.heldout
        if held.kind == "range" and not (
            held.start is not None
            and held.end is not None
            and 0 < held.start < held.end == self.counts.tokens
        ):
            raise ValueError(_HELDOUT_RANGE)
        return self

    @property
    def root(self) -> Path:
        """The token directory this manifest was read from."""
        if self._root is None:
            raise ValueError("this manifest was not read from a token directory")
        return self._root

    @property
    def tokenizer_fingerprint(self) -> str:
        """The fingerprint of the tokenizer that made the ids."""
        return self.tokenizer.fingerprint

    @property
    def tokenizer_model(self) -> str:
        """Where that tokenizer was read from ("" when unknown)."""
        return self.tokenizer.model

    @property
    def vocab_size(self) -> int:
        """Ids of the vocabulary."""
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        """The id after every document."""
        return self.tokenizer.eos_id

    @property
    def n_tokens(self) -> int:
        """Tokens in the stream."""
        return self.counts.tokens

    @property
    def n_documents(self) -> int:
        """Documents in the stream."""
        return self.counts.documents

    @property
    def item_bytes(self) -> int:
        """Bytes per token in the shards."""
        return ITEM_BYTES[self.dtype]

    @property
    def heldout_range(self) -> tuple[int, int]:
        """The held-out tokens ``[start, end)``; empty at the stream's end for a ``"tail"``."""
        held = self.heldout
        if held.start is None or held.end is None:
            return self.n_tokens, self.n_tokens
        return held.start, held.end

    def to_json(self) -> dict[str, Any]:
        """The manifest as ``manifest.json`` holds it."""
        return self.model_dump(mode="json")


class ResumePoint(_Section):
    """Where an interrupted run continues: document ``document`` starts at token ``start``; the
    tokens before ``position`` (the end of the last complete shard) are on disk."""

    document: Count
    start: Count
    position: Count


class Progress(_Section):
    """``progress.json``: written after every complete shard while a directory is made."""

    settings: TokenizeSettings
    shards: tuple[Shard, ...]
    resume: ResumePoint

    def to_json(self) -> dict[str, Any]:
        """The record as ``progress.json`` holds it."""
        return self.model_dump(mode="json")


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (itself, a list of it, or it or None), if it holds one."""
    if get_origin(annotation) is None and isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    return next((s for s in map(_section_of, get_args(annotation)) if s is not None), None)


def _problem(error: ErrorDetails) -> str:
    """What is wrong, in words, for the first error pydantic found in a manifest: the message
    the check raised, else the :class:`Invalid` of the field (or the section's ``INVALID``)."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error.get("ctx", {})["error"])
    section: type[BaseModel] | None = Manifest
    message: str | None = None
    name = ""
    index: int | None = None
    for part in error["loc"]:
        if isinstance(part, int):
            index = part
            message = getattr(section, "INVALID", None)
            continue
        if section is None or part not in section.model_fields:
            break
        info = section.model_fields[part]
        name = part
        section = _section_of(info.annotation)
        own = [m.message for m in info.metadata if isinstance(m, Invalid)]
        message = own[0] if own else getattr(section, "INVALID", None)
    if message is None:
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}"
    value = None if error["type"] == "missing" else error.get("input")
    return message.format(name=name, index=index, value=value)


def is_token_dir(path: Path) -> bool:
    """Whether ``path`` is meant as a token directory: it has a manifest, or is unfinished."""
    return path.is_dir() and (
        (path / MANIFEST).exists() or (path / PROGRESS).exists() or (path / OFFSETS).exists()
    )


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
        unfinished = (root / PROGRESS).exists()
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
    if not isinstance(doc, dict):
        raise ManifestError(f"{root}: {MANIFEST} is not a JSON object")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{root}: {_problem(exc.errors()[0])}") from None
    manifest._root = root
    if check_files:
        for shard in manifest.shards:
            _need_size(root / shard.file, shard.tokens * manifest.item_bytes, root)
        _need_size(root / OFFSETS, (manifest.n_documents + 1) * 8, root)
    return manifest


def _need_size(path: Path, size: int, root: Path) -> None:
    try:
        actual = os.stat(path).st_size
    except OSError:
        raise ManifestError(f"{root}: {path.name} is missing") from None
    if actual != size:
        raise ManifestError(f"{root}: {path.name} has {actual} bytes, the manifest says {size}")


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
    start, end = manifest.heldout_range
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


# --------------------------------------------------------------------------- a job's dataset


def is_hf_dataset(path: Path) -> bool:
    """Whether the directory ``path`` is a saved Hugging Face dataset (raw text)."""
    return (path / "dataset_info.json").exists() or any(path.glob("*.arrow"))


def tokenizer_mismatch(dataset: str, manifest: Manifest, model: str, model_fingerprint: str) -> str:
    """The message of a job whose model does not tokenise like its dataset was tokenised."""
    made_with = manifest.tokenizer_model or "another model"
    return (
        f"dataset {dataset!r} was tokenised with tokenizer {manifest.tokenizer_fingerprint} "
        f"({made_with}), but model {model!r} has tokenizer {model_fingerprint}: tokenise the "
        f"text again with this model ({TOKENIZE_COMMAND})"
    )


def check_job_dataset(
    dataset: Path,
    model: str,
    *,
    seq_len: int,
    eval_tokens: int | None,
    eval_path: Path | None = None,
    dataset_name: str | None = None,
    eval_name: str | None = None,
    model_name: str | None = None,
) -> tuple[Manifest, SplitPlan] | None:
    """The rules a job's dataset must meet, applied by the API at submission and by the worker
    when the job opens its data: a tokenised dataset must hold a valid manifest, be tokenised
    with the job's model's tokenizer (a local directory), carry its own held-out set and have
    room for the job's split; an ``eval_path`` must be text; a directory must be one of the two
    kinds. Decided from the files alone (``stat``, the manifest and the tokenizer files).

    ``dataset``, ``model`` and ``eval_path`` are the resolved paths; the messages call them
    ``dataset_name``, ``model_name`` and ``eval_name`` (the request's words) when given.

    Returns:
        The manifest and the job's split of a tokenised dataset; None for raw text (a file or a
        saved Hugging Face dataset), which the worker tokenises itself.

    Raises:
        DatasetError: which dataset, which model and why (both fingerprints on a mismatch).
    """
    name = dataset_name if dataset_name is not None else str(dataset)
    model_shown = model_name if model_name is not None else model
    if eval_path is not None and is_token_dir(eval_path):
        shown = eval_name if eval_name is not None else str(eval_path)
        raise DatasetError(
            f"dataset.eval_path {shown!r} is a tokenised dataset; an eval_path must be text (a "
            "tokenised dataset.path carries its own held-out set)"
        )
    if not dataset.is_dir():
        return None
    if not is_token_dir(dataset):
        if is_hf_dataset(dataset):
            return None
        raise DatasetError(
            f"dataset.path {name!r} is a directory with neither a manifest.json (a tokenised "
            "dataset, made by `p2law tokenize`) nor a saved Hugging Face dataset"
        )
    try:
        manifest = read_manifest(dataset)
    except ManifestError as exc:
        raise DatasetError(f"dataset.path {name!r} has no valid manifest: {exc}") from None
    if eval_path is not None:
        raise DatasetError(
            f"dataset.path {name!r} is a tokenised dataset, which carries its held-out set; "
            "dataset.eval_path cannot be given with it"
        )
    if not Path(model).is_dir():
        raise DatasetError(
            f"dataset.path {name!r} is a tokenised dataset, which needs a local model directory "
            f"to check the tokenizer against, not the hub id {model_shown!r}"
        )
    try:
        model_fp = tokenizer_fingerprint(Path(model))
    except TokenizerFilesError as exc:
        raise DatasetError(
            f"model {model_shown!r} cannot be checked against the tokenised dataset {name!r}: {exc}"
        ) from None
    if model_fp != manifest.tokenizer_fingerprint:
        raise DatasetError(tokenizer_mismatch(name, manifest, model_shown, model_fp))
    try:
        plan = plan_split(manifest, seq_len, eval_tokens)
    except SplitError as exc:
        raise DatasetError(f"dataset {name!r}: {exc}") from None
    return manifest, plan
