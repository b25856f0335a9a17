"""Writing a token directory: shards that decode to the documents, the manifest's fields,
uint16/uint32, resuming a killed run, refusing another dataset's directory, streaming memory."""

from __future__ import annotations

import json
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from app.core import tokens as core
from tests.workers.ml.pipeline_helpers import small_docs, small_tokenizer
from tests.workers.ml.tokens.conftest import Assets
from tests.workers.ml.tokens.helpers import (
    TEST_FINGERPRINT,
    TEST_SHARD_TOKENS,
    run_python,
    stream,
    tokenize,
)
from workers.ml import data
from workers.ml.corpus import write_corpus
from workers.ml.tokens.write import TokenizeInterruptedError

#: The keys of manifest.json, as every version-1 writer wrote them.
MANIFEST_KEYS = [
    "format",
    "version",
    "created_at",
    "tokenizer",
    "source",
    "dtype",
    "byte_order",
    "eos",
    "counts",
    "shard_tokens",
    "shards",
    "offsets",
    "heldout",
    "settings",
]


def test_shards_decode_to_the_documents_joined_with_eos(assets: Assets, tmp_path: Path) -> None:
    _model_dir, corpus, tok = assets
    docs = data.read_documents(corpus)
    manifest = tokenize(corpus, tmp_path / "ds", tok, batch_chars=30_000)

    assert manifest.dtype == "uint16" and manifest.n_documents == len(docs)
    assert len(manifest.shards) > 3
    assert all(s.tokens == 4096 for s in manifest.shards[:-1])
    ids = stream(manifest)
    # The same ids as the in-memory path (data.py: each document's ids, then EOS).
    assert ids.tolist() == data.tokenize_documents(docs, tok).tolist()
    eos = tok.eos_token
    assert tok.decode(ids.tolist()) == "".join(doc + eos for doc in docs)
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert list(raw) == MANIFEST_KEYS
    assert raw["eos"]["id"] == tok.eos_token_id and raw["byte_order"] == "little"
    assert raw["source"]["format"] == "txt" and raw["source"]["fingerprint"].startswith("src1:")
    assert not (tmp_path / "ds" / "progress.json").exists()
    # The file holds what the model it was written from says.
    assert raw == manifest.to_json()


def test_jsonl_and_saved_hf_datasets_stream_the_same_documents(
    assets: Assets, tmp_path: Path
) -> None:
    import pyarrow as pa

    _model_dir, corpus, tok = assets
    docs = data.read_documents(corpus)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "dataset_info.json").write_text("{}")
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        table = pa.table({"body": part})
        with (
            pa.OSFile(str(hf / f"data-{i:05d}-of-00002.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table, max_chunksize=2)  # several record batches per file

    expected = stream(tokenize(corpus, tmp_path / "from-txt", tok))
    for source in (jsonl, hf):
        manifest = tokenize(source, tmp_path / f"from-{source.name}", tok, text_field="body")
        assert np.array_equal(stream(manifest), expected)
        assert manifest.n_documents == len(docs)


def test_a_vocabulary_beyond_uint16_is_stored_as_uint32(tmp_path: Path) -> None:
    tok = small_tokenizer()
    tok.add_tokens([f"<x{i}>" for i in range(65_300)])
    assert len(tok) > 65_536
    docs = ["def f(x): return x <x65299>", "plain text <x0> and <x65000>"]
    corpus = write_corpus(tmp_path / "c.txt", docs=docs * 20)
    manifest = tokenize(corpus, tmp_path / "ds", tok, heldout=10)
    assert manifest.dtype == "uint32" and manifest.item_bytes == 4
    ids = stream(manifest)
    assert int(ids.max()) > 65_535
    assert ids.tolist() == data.tokenize_documents(docs * 20, tok).tolist()


#: A child process that tokenises as the tests do and is killed (SIGKILL: nothing runs after
#: it) once more than argv[4] tokens are written.
_KILLED_MID_RUN = f"""
import os, signal, sys
from pathlib import Path
from transformers import AutoTokenizer
from workers.ml.tokens.write import tokenize_to_dir

def kill(tokens_done, _chars):
    if tokens_done > int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)

tokenize_to_dir(
    Path(sys.argv[1]), Path(sys.argv[2]), AutoTokenizer.from_pretrained(sys.argv[3]),
    tokenizer_fingerprint={TEST_FINGERPRINT!r}, shard_tokens={TEST_SHARD_TOKENS},
    batch_chars=20_000, on_progress=kill,
)
"""


def test_a_run_killed_mid_way_continues_from_its_last_complete_shard(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    reference = tokenize(corpus, tmp_path / "ref", tok, batch_chars=20_000)
    out = tmp_path / "ds"

    def kill_after_shard(index: int) -> None:
        if index == 2:
            raise TokenizeInterruptedError("killed after shard 2")

    with pytest.raises(TokenizeInterruptedError):
        tokenize(corpus, out, tok, batch_chars=20_000, on_shard=kill_after_shard)
    with pytest.raises(core.ManifestError, match="did not finish"):
        core.read_manifest(out)
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("tokens-*.bin")}
    assert sorted(done) == ["tokens-00000.bin", "tokens-00001.bin", "tokens-00002.bin"]

    # Killed again, now in the middle of a shard: a partial temporary file is left behind.
    args = (str(corpus), str(out), str(model_dir), str(3 * 4096 + 100))
    killed = run_python("-c", _KILLED_MID_RUN, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(out.glob(".tokens-*.tmp*"))

    manifest = tokenize(corpus, out, tok, batch_chars=20_000)
    # The complete shards were not written again, and the result is the uninterrupted run's.
    for name, (inode, mtime) in done.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == (inode, mtime)
    for shard in reference.shards:
        assert (out / shard.file).read_bytes() == (tmp_path / "ref" / shard.file).read_bytes()
    assert (out / "offsets.bin").read_bytes() == (tmp_path / "ref" / "offsets.bin").read_bytes()
    assert (manifest.n_tokens, manifest.heldout) == (reference.n_tokens, reference.heldout)
    assert not list(out.glob(".*.tmp*")) and not (out / "progress.json").exists()
    # Asked again, the finished directory is returned as it is.
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert tokenize(corpus, out, tok, batch_chars=20_000).n_tokens == manifest.n_tokens
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_a_failed_run_leaves_no_partial_shard_behind(assets: Assets, tmp_path: Path) -> None:
    _model_dir, corpus, tok = assets

    def fail_mid_shard(tokens_done: int, _chars: int) -> None:
        if tokens_done > 3 * 4096 + 100:
            raise TokenizeInterruptedError("an error mid-shard")

    with pytest.raises(TokenizeInterruptedError):
        tokenize(corpus, tmp_path / "ds", tok, batch_chars=20_000, on_progress=fail_mid_shard)
    assert not list((tmp_path / "ds").glob(".*.tmp*"))
    progress = core.Progress.model_validate_json((tmp_path / "ds" / "progress.json").read_text())
    assert [s.file for s in progress.shards] == sorted(
        p.name for p in (tmp_path / "ds").glob("tokens-*.bin")
    )


def test_a_directory_holding_another_dataset_is_not_overwritten_unless_asked(
    assets: Assets, tmp_path: Path
) -> None:
    _model_dir, corpus, tok = assets
    tokenize(corpus, tmp_path / "ds", tok)
    other = write_corpus(tmp_path / "other.txt", docs=small_docs(50_000))
    with pytest.raises(data.DataError, match="another source"):
        tokenize(other, tmp_path / "ds", tok)
    assert tokenize(other, tmp_path / "ds", tok, overwrite=True).n_documents == len(
        data.read_documents(other)
    )
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(data.DataError, match="holds other files"):
        tokenize(corpus, tmp_path / "plain", tok)


def test_peak_memory_of_tokenising_does_not_grow_with_the_corpus(
    assets: Assets, tmp_path: Path
) -> None:
    _model_dir, _corpus, tok = assets
    docs = small_docs()
    peaks = {}
    for megabytes in (2, 20):
        corpus = write_corpus(tmp_path / f"c{megabytes}.txt", docs=docs * (5 * megabytes))
        tracemalloc.start()
        manifest = tokenize(
            corpus, tmp_path / f"d{megabytes}", tok, batch_chars=1 << 18, shard_tokens=1 << 20
        )
        peaks[megabytes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert manifest.n_tokens > megabytes * 200_000
    # Python-side peak: the batches in flight and a read buffer, not the corpus. A corpus held in
    # memory would be ten times larger at 20 MB than at 2 MB, and 20 MB of text at least; how
    # many batches are held at the peak depends on thread timing, hence the slack.
    assert peaks[20] < 2 * peaks[2], peaks
    assert peaks[20] < 20_000_000, peaks
