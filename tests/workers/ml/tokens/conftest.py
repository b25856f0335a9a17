"""A tiny model directory with its tokenizer and the corpus it comes with, shared by a module's
tests of the tokeniser."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.workers.ml.pipeline_helpers import write_model_and_corpus

Assets = tuple[Path, Path, PreTrainedTokenizerBase]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A tiny model directory (with its tokenizer), the corpus it comes with, the tokenizer."""
    model_dir, corpus = write_model_and_corpus(tmp_path_factory.mktemp("assets"))
    return model_dir, corpus, AutoTokenizer.from_pretrained(model_dir)
