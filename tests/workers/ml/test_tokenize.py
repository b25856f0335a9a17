"""Tokenised datasets: shards that decode to the documents, uint16/uint32, document boundaries,
resuming a killed run, streaming memory, batch order from the memory map, the raw-text cache, a
job on a tokenised dataset, and `p2law tokenize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.cli import main as cli_main
from app.core import tokens as core
from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from tests.workers.ml.pipeline_helpers import (
    small_docs,
    small_tokenizer,
    tiny_llama,
    write_model_and_corpus,
)
from tests.workers.ml.test_pipeline import CrashError, Recorder
from workers.ml import data, tokenized
from workers.ml.corpus import write_corpus
from workers.ml.pipeline import JobSpec, run_pipeline
from workers.ml.train import TrainConfig, Trainer

torch.set_num_threads(1)

SEQ = 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PreTrainedTokenizerBase]:
    """A tiny model directory (with its tokenizer), the corpus it comes with, the tokenizer."""
    model_dir, corpus = write_model_and_corpus(tmp_path_factory.mktemp("assets"))
    return model_dir, corpus, AutoTokenizer.from_pretrained(model_dir)


def _tokenize(
    source: Path,
    out: Path,
    tok: PreTrainedTokenizerBase | tokenized.Encoder,
    **options: object,
) -> core.Manifest:
    fields: dict[str, object] = {"tokenizer_fingerprint": "tok1:test", "shard_tokens": 4096}
    fields.update(options)
    return tokenized.tokenize_to_dir(source, out, tok, **fields)  # type: ignore[arg-type]


def _stream(manifest: core.Manifest) -> np.ndarray:  # type: ignore[type-arg]
    return tokenized.TokenStore(manifest).read(0, manifest.n_tokens)


def test_shards_decode_to_the_documents_joined_with_eos(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    _model_dir, corpus, tok = assets
    docs = data.read_documents(corpus)
    manifest = _tokenize(corpus, tmp_path / "ds", tok, batch_chars=30_000)

    assert manifest.dtype == "uint16" and manifest.n_documents == len(docs)
    assert len(manifest.shards) > 3
    assert all(s.tokens == 4096 for s in manifest.shards[:-1])
    ids = _stream(manifest)
    # The same ids as the in-memory path (data.py: each document's ids, then EOS).
    assert ids.tolist() == data.tokenize_documents(docs, tok).tolist()
    eos = tok.eos_token
    assert tok.decode(ids.tolist()) == "".join(doc + eos for doc in docs)
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert raw["eos"]["id"] == tok.eos_token_id and raw["byte_order"] == "little"
    assert raw["source"]["format"] == "txt" and raw["source"]["fingerprint"].startswith("src1:")
    assert not (tmp_path / "ds" / "progress.json").exists()


def test_jsonl_and_saved_hf_datasets_stream_the_same_documents(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
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

    expected = _stream(_tokenize(corpus, tmp_path / "from-txt", tok))
    for source in (jsonl, hf):
        manifest = _tokenize(source, tmp_path / f"from-{source.name}", tok, text_field="body")
        assert np.array_equal(_stream(manifest), expected)
        assert manifest.n_documents == len(docs)


def test_a_vocabulary_beyond_uint16_is_stored_as_uint32(tmp_path: Path) -> None:
    tok = small_tokenizer()
    tok.add_tokens([f"<x{i}>" for i in range(65_300)])
    assert len(tok) > 65_536
    docs = ["def f(x): return x <x65299>", "plain text <x0> and <x65000>"]
    corpus = write_corpus(tmp_path / "c.txt", docs=docs * 20)
    manifest = _tokenize(corpus, tmp_path / "ds", tok, heldout=10)
    assert manifest.dtype == "uint32" and manifest.item_bytes == 4
    ids = _stream(manifest)
    assert int(ids.max()) > 65_535
    assert ids.tolist() == data.tokenize_documents(docs * 20, tok).tolist()


def test_document_boundaries_are_the_offsets_even_for_a_document_read_in_pieces(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    _model_dir, _corpus, tok = assets
    docs = small_docs(60_000)
    long_doc = "\n".join(docs)  # one document of ~60 kB, cut into ~2 kB pieces on the way
    corpus = write_corpus(tmp_path / "c.txt", docs=[*docs, "x = 1\n", long_doc])
    pieces = list(data.iter_pieces(corpus, piece_bytes=2000))
    assert sum(not p.end for p in pieces) > 10  # the long document did come in pieces
    manifest = _tokenize(corpus, tmp_path / "ds", tok, piece_bytes=2000, heldout=100)

    documents = data.read_documents(corpus)
    assert documents[-1] == long_doc and manifest.n_documents == len(docs) + 2
    store = tokenized.TokenStore(manifest)
    offsets = store.offsets().tolist()
    assert offsets[0] == 0 and offsets[-1] == manifest.n_tokens
    for i, doc in enumerate(documents):
        ids = store.read(offsets[i], offsets[i + 1]).tolist()
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        # Pieces are encoded apart only where the tokenizer gives the ids of the whole.
        assert ids[:-1] == tok(doc, add_special_tokens=False)["input_ids"]


def test_a_run_killed_mid_way_continues_from_its_last_complete_shard(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    _model_dir, corpus, tok = assets
    reference = _tokenize(corpus, tmp_path / "ref", tok, batch_chars=20_000)
    out = tmp_path / "ds"

    def kill_after_shard(index: int) -> None:
        if index == 2:
            raise tokenized.TokenizeInterruptedError("killed after shard 2")

    with pytest.raises(tokenized.TokenizeInterruptedError):
        _tokenize(corpus, out, tok, batch_chars=20_000, on_shard=kill_after_shard)
    with pytest.raises(core.ManifestError, match="did not finish"):
        core.read_manifest(out)
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("tokens-*.bin")}
    assert sorted(done) == ["tokens-00000.bin", "tokens-00001.bin", "tokens-00002.bin"]

    # Killed again, now in the middle of a shard: a partial temporary file is left behind.
    def kill_mid_shard(tokens_done: int, _chars: int) -> None:
        if tokens_done > 3 * 4096 + 100:
            raise tokenized.TokenizeInterruptedError("killed mid-shard")

    with pytest.raises(tokenized.TokenizeInterruptedError):
        _tokenize(corpus, out, tok, batch_chars=20_000, on_progress=kill_mid_shard)
    assert list(out.glob(".tokens-*.tmp"))

    manifest = _tokenize(corpus, out, tok, batch_chars=20_000)
    # The complete shards were not written again, and the result is the uninterrupted run's.
    for name, (inode, mtime) in done.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == (inode, mtime)
    for shard in reference.shards:
        assert (out / shard.file).read_bytes() == (tmp_path / "ref" / shard.file).read_bytes()
    assert (out / "offsets.bin").read_bytes() == (tmp_path / "ref" / "offsets.bin").read_bytes()
    assert (manifest.n_tokens, manifest.heldout) == (reference.n_tokens, reference.heldout)
    assert not list(out.glob(".*.tmp")) and not (out / "progress.json").exists()
    # Asked again, the finished directory is returned as it is.
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert _tokenize(corpus, out, tok, batch_chars=20_000).n_tokens == manifest.n_tokens
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_a_directory_holding_another_dataset_is_not_overwritten_unless_asked(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    _model_dir, corpus, tok = assets
    _tokenize(corpus, tmp_path / "ds", tok)
    other = write_corpus(tmp_path / "other.txt", docs=small_docs(50_000))
    with pytest.raises(data.DataError, match="another source"):
        _tokenize(other, tmp_path / "ds", tok)
    assert _tokenize(other, tmp_path / "ds", tok, overwrite=True).n_documents == len(
        data.read_documents(other)
    )
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(data.DataError, match="holds other files"):
        _tokenize(corpus, tmp_path / "plain", tok)


def test_peak_memory_of_tokenising_does_not_grow_with_the_corpus(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    _model_dir, _corpus, tok = assets
    docs = small_docs()
    peaks = {}
    for megabytes in (2, 20):
        corpus = write_corpus(tmp_path / f"c{megabytes}.txt", docs=docs * (5 * megabytes))
        tracemalloc.start()
        manifest = _tokenize(
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


def test_batches_from_the_memory_map_are_the_tensor_batches_and_resume_exactly(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    in_memory = data.make_splits(corpus, tok, SEQ, eval_tokens=8 * SEQ)
    mapped = tokenized.job_splits(
        corpus, tok, SEQ, model=str(model_dir), eval_tokens=8 * SEQ, cache_root=tmp_path
    )
    assert mapped.train.n_blocks == in_memory.train.shape[0]

    stream = data.BatchStream(mapped.train.n_blocks, 8, seed=5)
    for _ in range(5):
        index = stream.next_indices()
        assert torch.equal(mapped.train.take(index), in_memory.train[index])
    saved = stream.state_dict()
    expected = [mapped.train.take(stream.next_indices()) for _ in range(200)]  # past an epoch
    resumed = data.BatchStream(mapped.train.n_blocks, 8, seed=5)
    resumed.load_state_dict(saved)
    assert all(torch.equal(mapped.train.take(resumed.next_indices()), e) for e in expected)

    # Training on the memory map is training on the tensor: the same losses, step by step,
    # without a copy of the corpus (the trainer keeps the memory-mapped blocks as they are).
    cfg = TrainConfig(lr=1e-3, total_steps=4, batch_size=4, seed=2)
    losses = []
    for blocks in (in_memory.train, mapped.train):
        trainer = Trainer(tiny_llama(len(tok), seed=1), blocks, cfg)
        trainer.run(4)
        losses.append(trainer.pop_train_loss())
    assert losses[0] == losses[1]
    assert Trainer(tiny_llama(len(tok)), mapped.train, cfg).blocks is mapped.train


def test_raw_text_is_tokenised_once_and_split_like_make_splits(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    cache = tmp_path / "cache"

    def splits(source: Path, **kw: object) -> tokenized.JobSplits:
        return tokenized.job_splits(
            source,
            tok,
            SEQ,
            model=str(model_dir),
            cache_root=cache,
            **kw,  # type: ignore[arg-type]
        )

    mapped = splits(corpus, eval_tokens=320)
    reference = data.make_splits(corpus, tok, SEQ, eval_tokens=320)
    assert mapped.protocol == reference.protocol
    assert torch.equal(mapped.eval, reference.eval)
    assert torch.equal(mapped.train.all(), reference.train)
    assert mapped.manifest.heldout.kind == "tail"

    built = {p: p.stat().st_mtime_ns for p in cache.glob("*/manifest.json")}
    assert len(built) == 1
    assert splits(corpus, eval_tokens=640).protocol != mapped.protocol  # same cache, bigger set
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/manifest.json")} == built

    half = len(small_docs()) // 2
    train_file = write_corpus(tmp_path / "train.txt", docs=small_docs()[:half])
    eval_file = write_corpus(tmp_path / "eval.txt", docs=small_docs()[half:])
    with_eval = splits(train_file, eval_path=eval_file, eval_tokens=64)
    reference = data.make_splits(train_file, tok, SEQ, eval_path=eval_file, eval_tokens=64)
    assert with_eval.protocol == reference.protocol
    assert torch.equal(with_eval.train.all(), reference.train)

    # A changed source is tokenised again, into a directory of its own.
    copy = tmp_path / "copy.txt"
    copy.write_bytes(corpus.read_bytes())
    before = splits(copy, eval_tokens=320).manifest
    with copy.open("a", encoding="utf-8") as fh:
        fh.write(data.DOC_SEPARATOR + "def appended(): return 1\n" * 20)
    after = splits(copy, eval_tokens=320).manifest
    assert after.root != before.root and after.n_documents == before.n_documents + 1
    assert len(list(cache.glob("*/manifest.json"))) == 5


def _token_dataset(assets: tuple[Path, Path, PreTrainedTokenizerBase], out: Path) -> Path:
    model_dir, corpus, tok = assets
    tokenized.tokenize_to_dir(
        corpus,
        out,
        tok,
        tokenizer_fingerprint=core.tokenizer_fingerprint(model_dir),
        tokenizer_model=str(model_dir),
        shard_tokens=8192,
    )
    return out


def _spec(model_dir: Path, dataset: Path, **fields: object) -> JobSpec:
    request = JobRequest.model_validate(
        {
            "model": str(model_dir),
            "method": "depth",
            "rho": 0.25,
            "tokens": 24 * 4 * SEQ,
            "dataset": {"path": str(dataset), "eval_tokens": 8 * SEQ},
            "checkpoints": 5,
            "seq_len": SEQ,
            "batch_size": 4,
            "lr": 1e-3,
            "warmup_frac": 0.1,
            "seed": 3,
            "device": "cpu",
            **fields,
        }
    )
    return JobSpec.from_request(request, JobPaths(str(model_dir), dataset, None))


def test_a_job_on_a_tokenised_dataset_runs_end_to_end_and_resumes_exactly(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    model_dir, _corpus, tok = assets
    dataset = _token_dataset(assets, tmp_path / "ds")
    manifest = core.read_manifest(dataset)
    spec = _spec(model_dir, dataset)

    # The held-out blocks are the first ones of the manifest's range; training stops before it.
    splits = tokenized.job_splits(dataset, tok, SEQ, model=str(model_dir), eval_tokens=8 * SEQ)
    start = manifest.heldout.start
    held = tokenized.TokenStore(manifest).read(start, start + 8 * SEQ).reshape(8, SEQ)
    assert torch.equal(splits.eval, torch.from_numpy(held))
    assert splits.train.start + splits.train.n_blocks * SEQ <= start

    reference = run_pipeline(
        spec, workdir=tmp_path / "ref", artifact_dir=tmp_path / "ref-art", hooks=Recorder()
    )
    assert reference.status == "succeeded" and len(reference.points) == 5
    assert reference.measured.protocol == data.fingerprint(splits.eval, SEQ)

    work = tmp_path / "work"
    with pytest.raises(CrashError):
        run_pipeline(spec, workdir=work, artifact_dir=tmp_path / "art", hooks=Recorder(crash_at=2))
    hooks = Recorder()
    out = run_pipeline(spec, workdir=work, artifact_dir=tmp_path / "art", hooks=hooks)
    assert hooks.resumed and hooks.measured == [reference.measured]
    for a, b in zip(out.points, reference.points, strict=True):
        assert a.tokens == b.tokens and a.loss == pytest.approx(b.loss, abs=1e-5)


def test_a_job_whose_model_tokenises_differently_is_refused_with_both_fingerprints(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    dataset = _token_dataset(assets, tmp_path / "ds")
    other = tmp_path / "other-model"
    small_tokenizer(vocab=400).save_pretrained(other)
    theirs, ours = core.tokenizer_fingerprint(model_dir), core.tokenizer_fingerprint(other)
    with pytest.raises(data.DataError) as caught:
        tokenized.job_splits(dataset, tok, SEQ, model=str(other))
    assert theirs in str(caught.value) and ours in str(caught.value)
    assert str(other) in str(caught.value) and str(dataset) in str(caught.value)
    with pytest.raises(data.DataError, match="carries its held-out set"):
        tokenized.job_splits(dataset, tok, SEQ, model=str(model_dir), eval_path=corpus)


def test_p2law_tokenize_writes_data_root_name(
    assets: tuple[Path, Path, PreTrainedTokenizerBase], tmp_path: Path
) -> None:
    model_dir, corpus, _tok = assets
    data_root = Path(os.environ["DATA_ROOT"])
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "corpus.txt").write_bytes(corpus.read_bytes())
    command = [sys.executable, "-m", "app.cli", "tokenize", "corpus.txt", "--model"]
    result = subprocess.run(
        [*command, str(model_dir), "--name", "corpus-tok", "--heldout-tokens", "2048"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = core.read_manifest(data_root / "corpus-tok")
    assert manifest.tokenizer_fingerprint == core.tokenizer_fingerprint(model_dir)
    assert manifest.heldout.end - manifest.heldout.start >= 2048
    assert f"{manifest.n_tokens:,} tokens" in result.stdout
    assert cli_main(["tokenize", "corpus.txt", "--model", str(model_dir), "--name", "../x"]) == 2
