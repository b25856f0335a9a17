"""The GPU check's script runs every section on CPU (``--smoke``) and writes one summary
(benchmarks/gpu_check.py); on a CUDA device the same code runs at the real sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-check")
    code = gpu_check.main(["--smoke", "--out", str(out)])
    report: dict[str, Any] = json.loads((out / gpu_check.SUMMARY).read_text())
    report["exit_code"] = code
    return report


def test_every_section_succeeds_in_one_summary(summary: dict[str, Any]) -> None:
    assert summary["sections"] == list(gpu_check.SECTIONS)
    failed = {name: summary[name]["error"] for name in summary["failed"]}
    assert failed == {} and summary["ok"] is True and summary["exit_code"] == 0
    for name in gpu_check.SECTIONS:
        section = summary[name]
        assert section["ok"] is True and 0 < section["seconds"] <= section["budget_s"]
    assert summary["device"]["kind"] == "cpu"


def test_the_gpu_tests_are_counted(summary: dict[str, Any]) -> None:
    tests = summary["gpu_tests"]
    # Without CUDA the GPU tests skip; they ran (collected) and none failed.
    assert tests == {**tests, "failed": 0, "exit_code": 0}
    assert tests["skipped"] >= 1


def test_the_job_is_killed_once_and_resumed_with_each_checkpoint_recorded_once(
    summary: dict[str, Any],
) -> None:
    job = summary["job"]
    assert job["status"] == job["job_status"] == "succeeded"
    assert job["backend"] == "gloo" and job["method"] == "2:4"
    assert job["activation_checkpointing"] is True
    assert job["killed"]["after_state_step"] >= 1 and job["relaunched"] is True
    tokens = [p["tokens"] for p in job["checkpoints"]]
    assert len(tokens) == job["expected_checkpoints"] == 3 and tokens == sorted(set(tokens))
    assert job["resumed_from_tokens"] in tokens and job["recorded_once"] is True
    assert tokens[-1] == job["total_steps"] * 8 * 32
    assert all(math.isfinite(p["loss"]) for p in job["checkpoints"])
    assert job["checkpoints"][-1]["loss"] < job["loss_after_prune"]
    assert job["artifact_keeps_2of4"] is True


def test_throughput_is_measured_eager_and_compiled(summary: dict[str, Any]) -> None:
    results = summary["throughput"]["results"]
    assert [(r["model"], r["compiled"]) for r in results] == [("tiny", False), ("tiny", True)]
    for entry in results:
        assert entry["tokens_per_s"] > 0 and entry["achieved_tflops"] > 0
        assert math.isfinite(entry["train_loss"]) and entry["predicted_peak_gib"] > 0
    assert results[1]["compile_backend"] == "eager"


def test_the_attention_op_is_found_in_bf16_and_fp32(summary: dict[str, Any]) -> None:
    (model,) = summary["attention"]["models"]
    assert model["attn_implementation"] == "sdpa"
    for label in ("bf16", "fp32"):
        found = model[label]
        assert found["chosen"], found
        # The op the model runs is one of the backends that run when alone allowed.
        assert found["backends"]["math"] is True
        chosen = found["chosen"][0].removesuffix(" (cpu)")
        assert found["backends"][chosen] is True
        # CUDA's kernels do not exist on CPU: the probe reports why, not success.
        assert isinstance(found["backends"]["cudnn"], str)


def test_the_memory_model_is_compared_on_three_shapes(summary: dict[str, Any]) -> None:
    shapes = summary["memory"]["shapes"]
    assert len(shapes) == 3 and any(s["checkpointing"] for s in shapes)
    for row in shapes:
        assert row["measured_gib"] > 0 and math.isfinite(row["ratio"])
        # The model is checked within 1% on CPU elsewhere (tests/core/test_memory.py); here
        # the job's placement and Trainer: within a quarter.
        assert 0.75 < row["ratio"] < 1.25, row


def test_a_failing_section_is_recorded_and_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(gpu_check.BUDGET_S, "device", 0)  # no time at all: killed at once
    code, summary = gpu_check.check(smoke=True, out=tmp_path, sections=("device",))
    assert code == 1 and summary["failed"] == ["device"]
    assert "budget" in summary["device"]["error"]
    written = json.loads((tmp_path / gpu_check.SUMMARY).read_text())
    assert written["ok"] is False
