"""Reading token directories: batches from the memory map, the raw-text cache, a job on a
tokenised dataset, and the dataset rules the worker applies again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.core import tokens as core
from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from tests.workers.ml.pipeline_helpers import small_docs, small_tokenizer, tiny_llama
from tests.workers.ml.test_pipeline import CrashError, Recorder
from tests.workers.ml.tokens.conftest import Assets
from workers.ml import data
from workers.ml.corpus import write_corpus
from workers.ml.job import JobSpec
from workers.ml.pipeline import prune_and_post_train
from workers.ml.tokens.read import JobSplits, TokenStore, job_splits
from workers.ml.tokens.write import tokenize_to_dir
from workers.ml.train import TrainConfig, Trainer

torch.set_num_threads(1)

SEQ = 32


def test_batches_from_the_memory_map_are_the_tensor_batches_and_resume_exactly(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    in_memory = data.make_splits(corpus, tok, SEQ, eval_tokens=8 * SEQ)
    mapped = job_splits(
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
        trainer.train_until(4)
        losses.append(trainer.pop_train_loss())
    assert losses[0] == losses[1]
    assert Trainer(tiny_llama(len(tok)), mapped.train, cfg).blocks is mapped.train


def test_raw_text_is_tokenised_once_and_split_like_make_splits(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    cache = tmp_path / "cache"

    def splits(source: Path, **kw: object) -> JobSplits:
        return job_splits(
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


def _token_dataset(assets: Assets, out: Path) -> Path:
    model_dir, corpus, tok = assets
    tokenize_to_dir(
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
    return JobSpec.build(request, JobPaths(str(model_dir), dataset, None), cuda=False)


def test_a_job_on_a_tokenised_dataset_runs_end_to_end_and_resumes_exactly(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, _corpus, tok = assets
    dataset = _token_dataset(assets, tmp_path / "ds")
    manifest = core.read_manifest(dataset)
    spec = _spec(model_dir, dataset)

    # The held-out blocks are the first ones of the manifest's range; training stops before it.
    splits = job_splits(dataset, tok, SEQ, model=str(model_dir), eval_tokens=8 * SEQ)
    start, _end = manifest.heldout_range
    held = TokenStore(manifest).read(start, start + 8 * SEQ).reshape(8, SEQ)
    assert torch.equal(splits.eval, torch.from_numpy(held))
    assert splits.train.start + splits.train.n_blocks * SEQ <= start

    reference = prune_and_post_train(
        spec, workdir=tmp_path / "ref", artifact_dir=tmp_path / "ref-art", hooks=Recorder()
    )
    assert reference.status == "succeeded" and len(reference.points) == 5
    assert reference.measured.protocol == data.fingerprint(splits.eval, SEQ)

    work = tmp_path / "work"
    with pytest.raises(CrashError):
        prune_and_post_train(
            spec, workdir=work, artifact_dir=tmp_path / "art", hooks=Recorder(crash_at=2)
        )
    hooks = Recorder()
    out = prune_and_post_train(spec, workdir=work, artifact_dir=tmp_path / "art", hooks=hooks)
    assert hooks.resumed and hooks.measured == [reference.measured]
    for a, b in zip(out.points, reference.points, strict=True):
        assert a.tokens == b.tokens and a.loss == pytest.approx(b.loss, abs=1e-5)


def test_a_job_whose_model_tokenises_differently_is_refused_with_both_fingerprints(
    assets: Assets, tmp_path: Path
) -> None:
    model_dir, corpus, tok = assets
    dataset = _token_dataset(assets, tmp_path / "ds")
    other = tmp_path / "other-model"
    small_tokenizer(vocab=400).save_pretrained(other)
    theirs, ours = core.tokenizer_fingerprint(model_dir), core.tokenizer_fingerprint(other)
    with pytest.raises(data.DataError) as caught:
        job_splits(dataset, tok, SEQ, model=str(other))
    assert theirs in str(caught.value) and ours in str(caught.value)
    assert str(other) in str(caught.value) and str(dataset) in str(caught.value)
    # The worker's message is the API's (app.core.tokens.check_job_dataset, both ways).
    assert str(caught.value) == core.tokenizer_mismatch(
        str(dataset), core.read_manifest(dataset), str(other), ours
    )
    with pytest.raises(data.DataError, match="carries its held-out set"):
        job_splits(dataset, tok, SEQ, model=str(model_dir), eval_path=corpus)
    with pytest.raises(data.DataError, match="an eval_path must be text"):
        job_splits(corpus, tok, SEQ, model=str(model_dir), eval_path=dataset)
