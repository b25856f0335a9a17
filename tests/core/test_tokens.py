"""app.core.tokens: tokenizer fingerprints from files, the manifest's checks, a job's split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core import tokens


def _tokenizer_dir(root: Path, *, vocab: int = 384, arch: str = "llama") -> Path:
    """A model directory's tokenizer files, saved by transformers as a model directory has them."""
    from tests.workers.ml.pipeline_helpers import small_tokenizer
    from workers.ml.models import build_tiny_model

    tok = small_tokenizer(vocab=vocab)
    tok.save_pretrained(root)
    model = build_tiny_model(arch)
    model.config.vocab_size = len(tok)
    model.config.save_pretrained(root)
    return root


def test_importing_it_pulls_in_no_torch_transformers_or_numpy() -> None:
    code = (
        "import sys, app.core.tokens; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'tokenizers') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fingerprint_is_the_same_for_a_tokenizer_saved_again_by_transformers(
    tmp_path: Path, arch: str
) -> None:
    from transformers import AutoTokenizer

    original = _tokenizer_dir(tmp_path / "a", arch=arch)
    # A pruned model saved by a job writes its tokenizer again (for qwen2 through a class that
    # rewrites tokenizer.json's BPE fields and tokenizer_config.json); the ids are the same.
    AutoTokenizer.from_pretrained(original).save_pretrained(tmp_path / "b")
    fp = tokens.tokenizer_fingerprint(original)
    assert fp.startswith("tok1:") and len(fp) == 5 + 32
    assert tokens.tokenizer_fingerprint(tmp_path / "b") == fp


def test_fingerprint_changes_with_the_vocabulary_or_the_eos_token(tmp_path: Path) -> None:
    a = _tokenizer_dir(tmp_path / "a", vocab=384)
    b = _tokenizer_dir(tmp_path / "b", vocab=400)
    assert tokens.tokenizer_fingerprint(a) != tokens.tokenizer_fingerprint(b)
    config_path = a / "tokenizer_config.json"
    fp = tokens.tokenizer_fingerprint(a)
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "eos_token": "<|pad|>"}))
    tokens.clear_fingerprint_cache()
    assert tokens.tokenizer_fingerprint(a) != fp


def test_fingerprint_ignores_what_does_not_change_the_ids(tmp_path: Path) -> None:
    a = _tokenizer_dir(tmp_path / "a")
    fp = tokens.tokenizer_fingerprint(a)
    path = a / "tokenizer.json"
    document = json.loads(path.read_text())
    document["decoder"] = None
    document["post_processor"] = {"type": "TemplateProcessing"}
    document["truncation"] = {"max_length": 8}
    path.write_text(json.dumps(document, indent=4))
    tokens.clear_fingerprint_cache()
    assert tokens.tokenizer_fingerprint(a) == fp


def test_a_directory_without_tokenizer_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(tokens.TokenizerFilesError, match="no tokenizer files"):
        tokens.tokenizer_fingerprint(tmp_path)


def test_uint16_holds_vocabularies_up_to_65536_ids() -> None:
    assert tokens.token_dtype(384) == "uint16"
    assert tokens.token_dtype(65_536) == "uint16"
    assert tokens.token_dtype(65_537) == "uint32"
    assert tokens.token_dtype(151_936) == "uint32"


def _write_dataset(root: Path, **changes: Any) -> Path:
    """A hand-made token directory: 2 shards of 100 + 50 uint16 tokens, 3 documents."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokens-00000.bin").write_bytes(b"\0" * 200)
    (root / "tokens-00001.bin").write_bytes(b"\0" * 100)
    (root / "offsets.bin").write_bytes(b"\0" * 8 * 4)
    manifest: dict[str, Any] = {
        "format": "p2law-tokens",
        "version": 1,
        "tokenizer": {"fingerprint": "tok1:" + "0" * 32, "vocab_size": 384, "eos_id": 0},
        "dtype": "uint16",
        "counts": {"documents": 3, "tokens": 150, "shards": 2},
        "shard_tokens": 100,
        "shards": [
            {"file": "tokens-00000.bin", "tokens": 100},
            {"file": "tokens-00001.bin", "tokens": 50},
        ],
        "heldout": {"kind": "range", "start": 110, "end": 150},
    }
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_a_consistent_manifest_reads_back(tmp_path: Path) -> None:
    manifest = tokens.read_manifest(_write_dataset(tmp_path / "d"))
    assert (manifest.n_tokens, manifest.n_documents, manifest.item_bytes) == (150, 3, 2)
    assert manifest.heldout == tokens.Heldout(kind="range", start=110, end=150)
    assert manifest.heldout_range == (110, 150)
    assert tokens.is_token_dir(tmp_path / "d")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "manifest version 2"),
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"counts": {"documents": 3, "tokens": 151, "shards": 2}}, "do not add up"),
        ({"shard_tokens": 80}, "every shard but the last"),
        ({"heldout": {"kind": "range", "start": 0, "end": 150}}, "held-out range"),
        ({"heldout": {"kind": "middle"}}, "heldout.kind"),
        ({"shards": [{"file": "../x.bin", "tokens": 150}]}, "shard 0 is malformed"),
        ({"tokenizer": {"vocab_size": 384, "eos_id": 0}}, "no tokenizer fingerprint"),
        ({"format": "other"}, "is not a 'p2law-tokens' manifest"),
        ({"tokenizer": None}, "no tokenizer section"),
        ({"tokenizer": {"fingerprint": "tok1:x", "vocab_size": 0, "eos_id": 0}}, "bad vocab_size"),
        ({"tokenizer": {"fingerprint": "tok1:x", "vocab_size": 384, "eos_id": -1}}, "bad eos_id"),
        ({"tokenizer": {"fingerprint": "tok1:x", "vocab_size": 70_000, "eos_id": 0}}, "fit in"),
        ({"counts": None}, "no counts section"),
        ({"counts": {"documents": 3, "tokens": "150", "shards": 2}}, "counts.tokens is not"),
        ({"counts": {"documents": 3, "tokens": True, "shards": 2}}, "counts.tokens is not"),
        ({"counts": {"documents": 3, "tokens": 150, "shards": 1}}, "disagrees with the shard"),
        ({"shard_tokens": 0}, "bad shard_tokens"),
        ({"shards": "tokens-00000.bin"}, "no shard list"),
        ({"shards": [{"file": "tokens-00000.bin", "tokens": 100}, 50]}, "shard 1 is malformed"),
        ({"heldout": None}, "no heldout section"),
        ({"heldout": {"kind": "range", "start": 110}}, "held-out range"),
    ],
)
def test_a_manifest_that_disagrees_with_itself_is_refused_with_the_reason(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(tokens.ManifestError, match=message):
        tokens.read_manifest(_write_dataset(tmp_path / "d", **changes))


def test_missing_or_truncated_files_and_an_unfinished_run_are_refused(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "d")
    (root / "tokens-00001.bin").write_bytes(b"\0" * 10)
    with pytest.raises(tokens.ManifestError, match=r"tokens-00001\.bin has 10 bytes"):
        tokens.read_manifest(root)
    (root / "tokens-00001.bin").write_bytes(b"\0" * 100)
    (root / "offsets.bin").unlink()
    assert tokens.read_manifest(root, check_files=False).n_tokens == 150
    with pytest.raises(tokens.ManifestError, match=r"offsets\.bin is missing"):
        tokens.read_manifest(root)
    (root / "manifest.json").unlink()
    (root / "progress.json").write_text("{}")
    with pytest.raises(tokens.ManifestError, match="did not finish"):
        tokens.read_manifest(root)
    (root / "manifest.json").write_text("[1, 2]")
    with pytest.raises(tokens.ManifestError, match="not a JSON object"):
        tokens.read_manifest(root)


def test_split_of_a_range_manifest_trains_before_the_range_and_evaluates_inside_it(
    tmp_path: Path,
) -> None:
    manifest = tokens.read_manifest(_write_dataset(tmp_path / "d"))
    plan = tokens.plan_split(manifest, 10, 20)
    assert plan == tokens.SplitPlan(seq_len=10, train_start=0, n_train=11, eval_start=110, n_eval=2)
    with pytest.raises(tokens.SplitError, match="holds 40 tokens"):
        tokens.plan_split(manifest, 10, 50)
    early = _write_dataset(tmp_path / "e", heldout={"kind": "range", "start": 5, "end": 150})
    with pytest.raises(tokens.SplitError, match="fewer than 10 tokens before"):
        tokens.plan_split(tokens.read_manifest(early), 10, 20)


def test_split_of_a_tail_manifest_is_the_raw_text_rule(tmp_path: Path) -> None:
    manifest = tokens.read_manifest(_write_dataset(tmp_path / "d", heldout={"kind": "tail"}))
    # 150 tokens = 15 blocks of 10; the last ceil(25 / 10) = 3 are held out.
    assert tokens.plan_split(manifest, 10, 25) == tokens.SplitPlan(10, 0, 12, 120, 3)
    with pytest.raises(tokens.SplitError, match="not enough for a held-out set of 15 blocks"):
        tokens.plan_split(manifest, 10, 150)


#: A manifest as the version-1 writer wrote it (p2law tokenize, a range cut at a document).
WRITTEN_BY_VERSION_1: dict[str, Any] = {
    "format": "p2law-tokens",
    "version": 1,
    "created_at": "2025-06-01T12:00:00+00:00",
    "tokenizer": {
        "fingerprint": "tok1:abababababababababababababababab",
        "model": "tok-model",
        "vocab_size": 384,
        "eos_id": 0,
        "eos_token": "<|endoftext|>",
    },
    "source": {
        "path": "/data/corpus.txt",
        "format": "txt",
        "text_field": None,
        "fingerprint": "src1:bde35a53c69c102cdaa97249e6901fe0",
        "bytes": 98782,
    },
    "dtype": "uint16",
    "byte_order": "little",
    "eos": {
        "id": 0,
        "token": "<|endoftext|>",
        "placement": "after every document: doc0 EOS doc1 EOS ...",
    },
    "counts": {"documents": 10, "tokens": 53265, "shards": 2},
    "shard_tokens": 32768,
    "shards": [
        {"file": "tokens-00000.bin", "tokens": 32768},
        {"file": "tokens-00001.bin", "tokens": 20497},
    ],
    "offsets": {
        "file": "offsets.bin",
        "dtype": "int64",
        "entries": 11,
        "meaning": "start of every document in the stream, then the stream's length",
    },
    "heldout": {
        "kind": "range",
        "start": 50042,
        "end": 53265,
        "tokens": 3223,
        "document_aligned": True,
        "rule": "the last documents holding at least the requested tokens; never trained on",
        "first_document": 9,
        "documents": 1,
    },
    "settings": {
        "source": "src1:bde35a53c69c102cdaa97249e6901fe0",
        "tokenizer": "tok1:abababababababababababababababab",
        "text_field": "text",
        "dtype": "uint16",
        "eos_id": 0,
        "shard_tokens": 32768,
        "heldout": 3000,
    },
}


@pytest.mark.parametrize(
    "heldout",
    [
        WRITTEN_BY_VERSION_1["heldout"],
        {"kind": "tail", "rule": "the last eval_tokens of seq_len blocks, as raw text"},
    ],
)
def test_a_manifest_the_version_1_writer_wrote_reads_back_and_writes_the_same_json(
    tmp_path: Path, heldout: dict[str, Any]
) -> None:
    written = {**WRITTEN_BY_VERSION_1, "heldout": heldout}
    root = tmp_path / "d"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(written, indent=1))
    manifest = tokens.read_manifest(root, check_files=False)
    assert manifest.root == root and manifest.to_json() == written
    assert (manifest.tokenizer_fingerprint, manifest.tokenizer_model) == (
        "tok1:abababababababababababababababab",
        "tok-model",
    )
    assert manifest.settings == tokens.TokenizeSettings(
        source="src1:bde35a53c69c102cdaa97249e6901fe0",
        tokenizer="tok1:abababababababababababababababab",
        text_field="text",
        dtype="uint16",
        eos_id=0,
        shard_tokens=32768,
        heldout=3000,
    )
    expected = (50042, 53265) if heldout["kind"] == "range" else (53265, 53265)
    assert manifest.heldout_range == expected


def test_the_dataset_rules_pass_raw_text_and_refuse_a_foreign_directory(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("some text")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "dataset_info.json").write_text("{}")
    for raw in (text, hf):
        assert tokens.check_job_dataset(raw, "org/model", seq_len=8, eval_tokens=None) is None
    (tmp_path / "other").mkdir()
    with pytest.raises(tokens.DatasetError, match=r"neither a manifest\.json"):
        tokens.check_job_dataset(
            tmp_path / "other", "org/model", seq_len=8, eval_tokens=None, dataset_name="other"
        )
    dataset = _write_dataset(tmp_path / "d")
    with pytest.raises(tokens.DatasetError, match="not the hub id 'org/model'"):
        tokens.check_job_dataset(dataset, "org/model", seq_len=8, eval_tokens=None)
