"""Submitting a job on a tokenised dataset: accepted when its manifest is valid and its tokenizer
is the model's; otherwise a 422 that says which dataset, which model and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from app.core import tokens
from tests.api.conftest import error_message
from tests.api.test_jobs import job_request, jobs_client, roots  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model directory with a tokenizer, another with a different one, and a token directory
    made with the first (built once, copied into each test's roots)."""
    from tests.workers.ml.pipeline_helpers import small_docs, small_tokenizer
    from workers.ml.corpus import write_corpus
    from workers.ml.tokens.write import tokenize_to_dir

    root = tmp_path_factory.mktemp("built")
    tok = small_tokenizer()
    tok.save_pretrained(root / "tok-model")
    (root / "tok-model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    small_tokenizer(vocab=400).save_pretrained(root / "other-model")
    corpus = write_corpus(root / "corpus.txt", docs=small_docs())
    tokenize_to_dir(
        corpus,
        root / "corpus-tok",
        tok,
        tokenizer_fingerprint=tokens.tokenizer_fingerprint(root / "tok-model"),
        tokenizer_model="tok-model",
        heldout=4096,
    )
    return {name: root / name for name in ("tok-model", "other-model", "corpus-tok")}


@pytest.fixture
def placed(built: dict[str, Path], roots: dict[str, Path]) -> dict[str, Path]:  # noqa: F811
    """The built directories inside MODEL_ROOT and DATA_ROOT."""
    model_root = roots["model"].parent
    out = {}
    for name, source in built.items():
        target = (roots["data"] if name == "corpus-tok" else model_root) / name
        shutil.copytree(source, target)
        out[name] = target
    return out


def _submit(client: TestClient, **overrides: object) -> Response:
    body = job_request(**{"model": "tok-model", "dataset": {"path": "corpus-tok"}, **overrides})
    return client.post("/jobs/prune-finetune", json=body)


def test_a_job_on_a_tokenised_dataset_of_its_model_is_accepted(
    jobs_client: TestClient,  # noqa: F811
    placed: dict[str, Path],
) -> None:
    response = _submit(jobs_client, seq_len=32, dataset={"path": "corpus-tok", "eval_tokens": 256})
    assert response.status_code == 202, response.text


def test_a_model_with_another_tokenizer_is_a_422_naming_both_fingerprints(
    jobs_client: TestClient,  # noqa: F811
    placed: dict[str, Path],
) -> None:
    message = error_message(_submit(jobs_client, model="other-model"), 422)
    ours = tokens.tokenizer_fingerprint(placed["tok-model"])
    theirs = tokens.tokenizer_fingerprint(placed["other-model"])
    assert ours != theirs
    assert ours in message and theirs in message
    assert "'other-model'" in message and "'corpus-tok'" in message
    assert "p2law tokenize" in message
    # A model directory without tokenizer files cannot be checked: a 422 too.
    message = error_message(_submit(jobs_client, model="tiny"), 422)
    assert "no tokenizer files" in message and "'corpus-tok'" in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no-manifest", "did not finish"),
        ("bad-json", "not readable JSON"),
        ("short-shard", "has 10 bytes"),
        ("empty-dir", "neither a manifest.json"),
    ],
)
def test_a_directory_without_a_valid_manifest_is_a_422(
    jobs_client: TestClient,  # noqa: F811
    placed: dict[str, Path],
    damage: str,
    expected: str,
) -> None:
    dataset = placed["corpus-tok"]
    if damage == "no-manifest":  # an interrupted `p2law tokenize`
        (dataset / "manifest.json").unlink()
        (dataset / "progress.json").write_text("{}")
    elif damage == "bad-json":
        (dataset / "manifest.json").write_text("{not json")
    elif damage == "short-shard":
        (dataset / "tokens-00000.bin").write_bytes(b"\0" * 10)
    else:
        shutil.rmtree(dataset)
        dataset.mkdir()
    message = error_message(_submit(jobs_client), 422)
    assert expected in message and "'corpus-tok'" in message


def test_a_split_the_dataset_cannot_hold_and_an_eval_path_beside_it_are_422s(
    jobs_client: TestClient,  # noqa: F811
    placed: dict[str, Path],
) -> None:
    big = {"path": "corpus-tok", "eval_tokens": 1_000_000}
    message = error_message(_submit(jobs_client, seq_len=32, dataset=big), 422)
    assert "held-out range holds" in message and "1000000 tokens" in message
    with_eval = {"path": "corpus-tok", "eval_path": "corpus.txt"}
    message = error_message(_submit(jobs_client, dataset=with_eval), 422)
    assert "eval_path cannot be given" in message
    raw_with_tokenised_eval = {"path": "corpus.txt", "eval_path": "corpus-tok"}
    message = error_message(_submit(jobs_client, dataset=raw_with_tokenised_eval), 422)
    assert "must be text" in message
