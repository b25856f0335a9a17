"""make-model: tokenizer + dense model pretrained on a corpus, saved reloadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

from workers.ml import data
from workers.ml.corpus import default_documents
from workers.ml.make_model import SIZES, main, train_tokenizer

torch.set_num_threads(1)


def test_command_trains_a_small_model_whose_files_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "m"
    corpus_out = tmp_path / "data" / "m.txt"
    rc = main([
        "--arch", "qwen2", "--out", str(out), "--corpus-out", str(corpus_out),
        "--max-corpus-bytes", "120000", "--hidden", "32", "--layers", "2", "--heads", "2",
        "--kv-heads", "1", "--intermediate", "64", "--vocab", "320", "--seq-len", "16",
        "--batch-size", "4", "--tokens", str(30 * 64), "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "30 steps" in printed

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 2
    assert len(tok) == 320 and tok.eos_token == "<|endoftext|>" and tok.pad_token is not None
    assert model.config.eos_token_id == tok.eos_token_id
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"

    info = json.loads((out / "p2law_make_model.json").read_text())
    assert info["tokens"] == 30 * 64 and info["schedule"].startswith("cosine")
    # Training moved the model off the uniform loss, and the saved corpus reproduces its
    # held-out set: a job on that file measures L0 on the same tokens.
    assert info["eval_loss"] < torch.log(torch.tensor(320.0)).item()
    splits = data.make_splits(corpus_out, tok, 16)
    assert splits.protocol == info["protocol"]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_each_size_preset_builds_a_model_that_runs_and_whose_config_counts_it(size: str) -> None:
    from app.core.capacity import capacity_from_config
    from workers.ml.make_model import build_model
    from workers.ml.models import count_parameters

    tok = train_tokenizer(default_documents(30_000), 300)
    model = build_model("llama", SIZES[size], len(tok), seq_len=16, tokenizer=tok, seed=0)
    with torch.no_grad():
        logits = model(torch.arange(8)[None, :]).logits
    assert logits.shape == (1, 8, len(tok)) and torch.isfinite(logits).all()
    capacity = capacity_from_config(model.config.to_dict())
    assert capacity is not None and capacity.n0 == count_parameters(model)


@pytest.mark.parametrize("config_cls", [LlamaConfig, Qwen2Config])
def test_saved_tokenizer_reloads_with_the_same_splits_for_each_architecture(
    tmp_path: Path, config_cls: type[LlamaConfig] | type[Qwen2Config]
) -> None:
    tok = train_tokenizer(default_documents(60_000), 300)
    tok.save_pretrained(tmp_path)
    config_cls().save_pretrained(tmp_path)  # AutoTokenizer picks its class from the model type
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return x  \n\n\tcafé 2024 it's"
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded.eos_token_id == tok.eos_token_id
