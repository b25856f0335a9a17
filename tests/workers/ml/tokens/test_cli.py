"""`p2law tokenize`: the command the API's command line hands over to, with the writer's
defaults."""

from __future__ import annotations

import os
from pathlib import Path

from app.core import tokens as core
from tests.workers.ml.tokens.conftest import Assets
from tests.workers.ml.tokens.helpers import run_python
from workers.ml.tokens.cli import main
from workers.ml.tokens.write import HELDOUT_TOKENS, SHARD_TOKENS


def test_p2law_tokenize_writes_data_root_name(assets: Assets, tmp_path: Path) -> None:
    model_dir, corpus, _tok = assets
    data_root = Path(os.environ["DATA_ROOT"])
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "corpus.txt").write_bytes(corpus.read_bytes())
    command = ["-m", "app.cli", "tokenize", "corpus.txt", "--model"]
    result = run_python(
        *command, str(model_dir), "--name", "corpus-tok", "--heldout-tokens", "2048"
    )
    assert result.returncode == 0, result.stderr
    manifest = core.read_manifest(data_root / "corpus-tok")
    assert manifest.tokenizer_fingerprint == core.tokenizer_fingerprint(model_dir)
    start, end = manifest.heldout_range
    assert end - start >= 2048
    assert f"{manifest.n_tokens:,} tokens" in result.stdout
    refused = run_python(*command, str(model_dir), "--name", "../x")
    assert refused.returncode == 2 and "outside" in refused.stderr, refused.stderr
    assert not (data_root.parent / "x").exists()


def test_a_name_outside_data_root_or_data_root_itself_is_refused(assets: Assets) -> None:
    model_dir, _corpus, _tok = assets
    assert main(["corpus.txt", "--model", str(model_dir), "--name", "../x"]) == 2
    assert main(["corpus.txt", "--model", str(model_dir), "--name", "."]) == 2


def test_p2law_tokenize_help_is_the_one_parser_with_the_writer_defaults() -> None:
    result = run_python("-m", "app.cli", "tokenize", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: p2law tokenize" in result.stdout
    help_text = " ".join(result.stdout.split())
    assert f"default: {SHARD_TOKENS}" in help_text
    assert f"min({HELDOUT_TOKENS}, tokens / 10)" in help_text
