"""The main pass of the measurement study (studies/p2_small_models.py) on small inputs.

No model is pretrained or post-trained here (that is the study's `--quick` run): these check that
what the study writes uploads to the service as is, that its fitting report covers every
protocol, and that its throughput probe times the job's own `Trainer` on the model it sizes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.law.synthetic import SYNTHETIC_P2, make_rows
from app.schemas.observations import CSV_COLUMNS, CSV_OPTIONAL
from app.services.observations import parse_csv
from studies import p2_small_models as study


def _pipeline_result(run: str, method: str, rho: float, losses: list[float]) -> dict[str, Any]:
    """A finished run as `run_pruned` caches it."""
    return {
        "run_id": run,
        "size": "S",
        "method": method,
        "target_rho": rho,
        "status": "succeeded",
        "measured": {
            "n0": 75_672,
            "rho": rho + 0.003,
            "l0": 2.5,
            "protocol": "eval:0123456789abcdef:seq128:n16384",
        },
        "points": [
            {"tokens": 2048 * 2**i, "loss": loss, "below_l0": loss < 2.49}
            for i, loss in enumerate(losses)
        ],
    }


def test_observations_csv_parses_with_the_upload_parser(tmp_path: Path) -> None:
    results = [
        _pipeline_result("study-llama-S-2:4-0.15", "2:4", 0.15, [2.9, 2.8, 2.7]),
        _pipeline_result("study-llama-S-depth-0.25", "depth", 0.25, [3.4, 3.1, 2.48]),
        {"run_id": "study-llama-S-2:4-0.35", "method": "2:4", "status": "skipped"},
    ]
    rows = study.observation_rows(results)
    path = tmp_path / "observations.csv"
    study.write_observations_csv(rows, path)
    text = path.read_text()
    assert text.splitlines()[0].split(",") == [*CSV_COLUMNS, *CSV_OPTIONAL]
    parsed = parse_csv(text, max_rows=100)
    assert len(parsed) == 6  # the skipped run has no points
    assert {r["source"] for r in parsed} == {"study"}
    assert sum(r["_below_l0"] for r in rows) == 1


def test_fit_method_reports_every_protocol_and_the_rho_split() -> None:
    syn = make_rows(
        params_by_method={"depth": SYNTHETIC_P2["depth"]},
        sizes=((0.5e9, 3.0), (1.0e9, 2.75)),
        n_checkpoints=8,
        seed=1,
    )
    rows = [
        {
            "run_id": r.run_id,
            "family": r.family,
            "method": r.method,
            "n0": r.n0,
            "rho": r.rho,
            "l0": r.l0,
            "tokens": r.tokens,
            "loss": r.loss,
            "protocol": "synthetic",
            "_below_l0": False,
        }
        for r in syn
    ]
    report = study.fit_method(rows, replace(study.QUICK, bootstrap=2))
    assert report["n_runs"] == 6 and report["n_below_l0_flagged"] == 0
    assert report["rho_split"]["worked"]
    p2 = report["fits"]["p2"]
    for key in ("D", "N0", "rho"):
        assert p2[key]["holdout_metrics"]["mape"] < 5.0, key
        assert p2[key]["bootstrap"]["n"] == 2
    assert "holdout_metrics" in report["fits"]["curve"]["D"]


def test_control_below_l0_beyond_noise_is_flagged() -> None:
    control = {
        "l0": 2.5,
        "eval_noise": 0.01,
        "points": [{"tokens": 1, "loss": 2.49}, {"tokens": 2, "loss": 2.45}],
    }
    summary = study.control_summary(control)
    assert summary["below_l0_beyond_noise"]
    assert summary["min_minus_l0"] == pytest.approx(-0.05)
    assert not study.control_summary(control | {"eval_noise": 0.03})["below_l0_beyond_noise"]


def test_throughput_probe_times_the_trainer_on_the_model_it_sizes(
    made_trainers: list[Any],
) -> None:
    shape = study.QUICK.sizes["S"]
    probe = study.probe_throughput(shape, study.QUICK, steps=2)
    assert [t.step for t in made_trainers] == [3]  # one warm-up step, then the two timed ones
    assert probe["tokens_per_s"] > 0
    # Llama with tied embeddings over the tokenizer's vocabulary (+ 2 special tokens): the N0
    # that sets each size's pretraining tokens.
    h, kv = shape.hidden, shape.hidden // shape.heads * shape.kv_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * shape.intermediate + 2 * h
    assert probe["n_params"] == (study.QUICK.vocab + 2) * h + shape.layers * layer + h
