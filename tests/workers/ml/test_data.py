"""Reading, packing, splitting, fingerprinting and streaming of job datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.workers.ml.pipeline_helpers import small_docs, small_tokenizer
from workers.ml import data
from workers.ml.corpus import write_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return small_tokenizer()


def test_txt_documents_are_split_on_the_record_separator(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(f"first doc{data.DOC_SEPARATOR}second doc{data.DOC_SEPARATOR}  ")
    assert data.read_documents(path) == ["first doc", "second doc"]


def test_jsonl_reads_the_text_field_and_rejects_records_without_it(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "x y"}) + "\n\n" + json.dumps({"body": "z"}) + "\n")
    assert data.read_documents(path, text_field="body") == ["x y", "z"]
    with pytest.raises(data.DataError, match="no 'text' field"):
        data.read_documents(path)


def test_saved_hf_dataset_dir_is_read_from_its_arrow_files(tmp_path: Path) -> None:
    import pyarrow as pa

    # The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC stream shards + metadata.
    (tmp_path / "dataset_info.json").write_text("{}")
    (tmp_path / "state.json").write_text("{}")
    table = pa.table({"text": ["first doc", "", "second doc"], "id": [1, 2, 3]})
    shard = str(tmp_path / "data-00000-of-00001.arrow")
    with pa.OSFile(shard, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert data.read_documents(tmp_path) == ["first doc", "second doc"]
    with pytest.raises(data.DataError, match="no column 'body'"):
        data.read_documents(tmp_path, text_field="body")


def test_dataset_dir_without_arrow_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text("{}")
    with pytest.raises(data.DataError, match=r"no \.arrow files"):
        data.read_documents(tmp_path)


def test_documents_end_with_eos_and_pack_into_full_blocks(tok) -> None:  # type: ignore[no-untyped-def]
    ids = data.tokenize_documents(["def f(): pass", "x = 1"], tok)
    assert (ids == tok.eos_token_id).sum() == 2 and ids[-1] == tok.eos_token_id
    blocks = data.pack(torch.arange(10), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_held_out_set_is_the_corpus_tail_and_never_trained_on(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    corpus = write_corpus(tmp_path / "c.txt", docs=small_docs())
    all_blocks = data.load_blocks(corpus, tok, 32)
    splits = data.make_splits(corpus, tok, 32, eval_tokens=320)
    assert splits.eval.shape == (10, 32)
    assert torch.equal(splits.eval, all_blocks[-10:])
    assert torch.equal(splits.train, all_blocks[:-10])
    assert splits.train.shape[0] + splits.eval.shape[0] == all_blocks.shape[0]


def test_explicit_eval_path_gives_the_held_out_set(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    docs = small_docs()
    train_file = write_corpus(tmp_path / "train.txt", docs=docs[: len(docs) // 2])
    eval_file = write_corpus(tmp_path / "eval.txt", docs=docs[len(docs) // 2 :])
    splits = data.make_splits(train_file, tok, 32, eval_path=eval_file, eval_tokens=64)
    assert torch.equal(splits.train, data.load_blocks(train_file, tok, 32))
    assert torch.equal(splits.eval, data.load_blocks(eval_file, tok, 32)[:2])


def test_too_small_corpus_is_a_clear_error(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    corpus = write_corpus(tmp_path / "c.txt", docs=["tiny text"])
    with pytest.raises(data.DataError, match="not enough"):
        data.make_splits(corpus, tok, 4, eval_tokens=1000)


def test_calibration_rows_come_from_the_training_split_only() -> None:
    train = torch.arange(200).reshape(50, 4)
    calib = data.calibration_ids(train, 8, seed=3)
    rows = {tuple(r) for r in train.tolist()}
    assert calib.shape == (8, 4) and all(tuple(r) in rows for r in calib.tolist())
    assert torch.equal(calib, data.calibration_ids(train, 8, seed=3))
    assert data.calibration_ids(train, 500, seed=0).shape[0] == 50


def test_fingerprint_is_stable_and_sensitive_to_every_token() -> None:
    ids = torch.arange(64).reshape(2, 32)
    fp = data.fingerprint(ids, 32)
    assert re.fullmatch(r"eval:[0-9a-f]{16}:seq32:n64", fp)
    assert fp == data.fingerprint(ids.clone().to(torch.int32), 32)
    changed = ids.clone()
    changed[1, 5] += 1
    assert data.fingerprint(changed, 32) != fp
    # Pinned value: the protocol must not change between releases for the same ids.
    assert data.fingerprint(torch.zeros(1, 2, dtype=torch.long), 2) == (
        "eval:374708fff7719dd5:seq2:n2"
    )


def test_batch_stream_visits_each_block_once_per_epoch_and_resumes_exactly() -> None:
    stream = data.BatchStream(10, 4, seed=7)
    first_epoch = torch.cat([stream.next_indices() for _ in range(5)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))
    a = data.BatchStream(10, 4, seed=7)
    for _ in range(3):
        a.next_indices()
    saved = a.state_dict()
    expected = [a.next_indices().tolist() for _ in range(4)]
    b = data.BatchStream(10, 4, seed=7)
    b.load_state_dict(saved)
    assert [b.next_indices().tolist() for _ in range(4)] == expected
    with pytest.raises(data.DataError):
        data.BatchStream(11, 4, seed=7).load_state_dict(saved)
