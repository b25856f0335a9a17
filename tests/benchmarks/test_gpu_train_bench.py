"""The GPU benchmark's arithmetic and its CPU dry run (benchmarks/gpu_train_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from app.core.flops import flops_per_token
from benchmarks import gpu_train_bench as bench
from benchmarks.memory_model import SHAPES, ModelShape
from workers.ml.models import count_parameters
from workers.ml.pipeline import train_config
from workers.ml.strategy import OneDevice


def test_without_cuda_it_skips_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r.json"
    assert bench.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(bench.SKIPPED)
    assert not out.exists()


def test_dry_run_trains_the_tiny_model_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu" / "r.json"
    argv = ["--dry-run", "--out", str(out), "--peak-tflops", "1", "--compile", "both"]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["peak_source"] == "given"
    eager, compiled = report["results"]
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["compile_backend"] == "eager"  # dynamo alone on CPU
    for entry in (eager, compiled):
        assert entry["model"] == "tiny" and entry["steps"] == 2 and entry["seq_len"] == 32
        assert entry["tokens_per_s"] > 0 and entry["mfu"] is not None and entry["mfu"] > 0
        assert entry["flops_per_token"] == flops_per_token(bench.TINY, 32)
        assert torch.isfinite(torch.tensor(entry["train_loss"]))
        assert entry["dtype"] == "float32"  # a CPU job's dtype: no autocast
    assert "tiny (eager):" in capsys.readouterr().out


def test_the_model_is_placed_and_trained_as_a_one_device_job_places_it() -> None:
    device = torch.device("cpu")
    spec = bench.bench_spec(device=device, seq_len=16, batch_size=2, steps=4, compile=False)
    strategy = OneDevice(spec, device)
    config = bench.hf_config(bench.TINY, seq_len=16)
    model = bench.job_model(config, strategy, checkpointing=True)
    # Materialised from the meta device, with values (norms 1, weights random, tied head).
    params = dict(model.named_parameters())
    assert all(p.device == device and torch.isfinite(p).all() for p in params.values())
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    assert head.weight is model.get_input_embeddings().weight
    assert bool((params["model.norm.weight"] == 1).all())
    assert model.is_gradient_checkpointing
    # The job's training config: warm-up, schedule and clipping of the request's defaults.
    assert train_config(spec).grad_clip == spec.request.grad_clip is not None


def test_the_local_smollm2_directory_is_used_when_present(tmp_path: Path) -> None:
    small = ModelShape("s", 32, 1, 2, 1, 64, 128, tied=True)
    config = AutoConfig.for_model(**bench.hf_config(small, seq_len=16))
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(tmp_path / "smollm2-135m")
    built, shape, source = bench.build(
        "smollm2-135m", model_root=tmp_path, seq_len=16, device=torch.device("cpu")
    )
    assert source.startswith("weights from") and shape.n_params == small.n_params
    assert count_parameters(built) == small.n_params
    loaded = built.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value), name
    _, fallback, _, source = bench.model_config(
        "smollm2-135m", model_root=tmp_path / "none", seq_len=16
    )
    assert fallback == SHAPES["SmolLM2-135M"] and source.startswith("random")
