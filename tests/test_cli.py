"""The `p2law` command line: fit a CSV, then predict and recommend from the fit file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from app.cli import main
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.law.recommend import recommend
from app.law.select import FormScore, choose
from app.law.synthetic import SYNTHETIC_P2, make_rows


@pytest.fixture()
def observations_csv(tmp_path: Path) -> Path:
    rows = make_rows(n_checkpoints=8, seed=3)
    path = tmp_path / "obs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss"])
        for r in rows:
            writer.writerow([r.run_id, r.family, r.method, r.n0, r.rho, r.l0, r.tokens, r.loss])
    return path


def test_fit_writes_table_plot_and_fit_file(
    observations_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    method = next(iter(SYNTHETIC_P2))
    assert main(["fit", str(observations_csv), "--method", method, "--bootstrap", "3"]) == 0
    out = capsys.readouterr().out
    assert "gamma" in out and "r2" in out
    assert observations_csv.with_suffix(".fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads(observations_csv.with_suffix(".fit.json").read_text())
    assert document["form"] == "p2" and len(document["refits"]) == 3
    assert set(document["params"]) == {"N_C", "D_C", "E", "alpha", "beta", "gamma", "delta"}


def test_recommend_with_inline_params_matches_the_law(capsys: pytest.CaptureFixture[str]) -> None:
    params = {
        "N_C": 0.5,
        "D_C": 0.02,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    }
    argv = [
        "recommend",
        "--n0",
        "1e9",
        "--rho",
        "0.25",
        "--l0",
        "2.5",
        "--rule",
        "marginal",
        "--threshold",
        "0.05",
    ]
    argv += [f"--param={k}={v}" for k, v in params.items()]
    assert main(argv) == 0
    law = FittedLaw(get_form("p2"), params)
    expected = recommend(law, n0=1e9, rho=0.25, l0=2.5, rule="marginal", threshold=0.05)
    printed = float(capsys.readouterr().out.split()[1])
    assert printed == pytest.approx(expected.tokens, rel=1e-5)


def test_unreachable_target_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "recommend",
        "--n0",
        "1e9",
        "--rho",
        "0.25",
        "--l0",
        "2.5",
        "--rule",
        "target",
        "--target-loss",
        "2.0",
        "--param",
        "N_C=0.5",
        "--param",
        "D_C=0.02",
        "--param",
        "E=0.05",
        "--param",
        "alpha=0.3",
        "--param",
        "beta=0.5",
        "--param",
        "gamma=-0.8",
        "--param",
        "delta=0.1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "target loss 2 is unreachable" in err and "floor" in err and "2.68143" in err


def test_missing_law_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", "--n0", "1e9", "--rho", "0.25", "--l0", "2.5", "--tokens", "1e8"]
    assert main(argv) == 2
    assert "--fit" in capsys.readouterr().err


def test_fit_auto_prints_the_comparison_and_saves_it(
    observations_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "auto.fit.json"
    argv = ["fit", str(observations_csv), "--method", "depth", "--form", "auto"]
    argv += ["--select-by", "rho", "--save", str(save), "--plot", str(tmp_path / "auto.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "select_by rho" in out and "<- chosen" in out and "p2-tpp" in out
    document = json.loads(save.read_text())
    selection = document["selection"]
    assert document["form"] == selection["chosen"] and selection["select_by"] == "rho"
    assert {row["form"] for row in selection["table"]} >= {"p2", "frantar", "curve", "p2-tpp"}
    # The saved table, read back, gives the same choice by the rule of docs/law.md §4.
    table = [
        FormScore(
            row["form"],
            tuple(row["mape"]),
            tuple(row["rmse"]),
            row["mean_mape"],
            row["mean_rmse"],
            row["reason"],
            tuple(row["run_mape"]),
        )
        for row in selection["table"]
    ]
    assert choose(table) == document["form"]


def test_select_by_without_auto_is_a_clear_error(
    observations_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", str(observations_csv), "--select-by", "N0"]) == 2
    assert "--form auto" in capsys.readouterr().err


def test_fit_reports_interval_coverage_and_predict_gives_both_interval_kinds(
    observations_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    method = next(iter(SYNTHETIC_P2))
    assert main(["fit", str(observations_csv), "--method", method, "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert "interval coverage" in out
    for protocol in ("D", "N0", "rho"):
        assert any(line.startswith(protocol + " ") for line in out.splitlines())
    fit_file = str(observations_csv.with_suffix(".fit.json"))
    assert json.loads(Path(fit_file).read_text())["calibration"]["pools"]
    point = ["--n0", "2e9", "--rho", "0.2", "--l0", "2.6", "--tokens", "1e9"]

    def band(kind: str) -> tuple[float, float]:
        assert main(["predict", "--fit", fit_file, *point, "--interval-kind", kind]) == 0
        fields = capsys.readouterr().out.strip().splitlines()[-1].split()
        return float(fields[2]), float(fields[3])

    prediction, confidence = band("prediction"), band("confidence")
    assert prediction != confidence
    assert prediction[1] - prediction[0] > confidence[1] - confidence[0]


def test_fit_takes_one_recipes_rows_and_predict_refuses_a_fit_of_another(
    observations_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    method = next(iter(SYNTHETIC_P2))
    with observations_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    mixed = tmp_path / "mixed.csv"
    with mixed.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "recipe"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "recipe": ""})  # full
            # A LoRA copy of every run, 10% worse: fitted with the full rows it would mix laws.
            lora = {**row, "run_id": "lora-" + row["run_id"], "recipe": "lora"}
            writer.writerow({**lora, "loss": float(row["loss"]) * 1.1})
    assert main(["fit", str(mixed), "--method", method, "--recipe", "lora"]) == 0
    n_rows = sum(row["method"] == method for row in rows)
    document = json.loads(mixed.with_suffix(".fit.json").read_text())
    assert document["recipe"] == "lora" and document["n_observations"] == n_rows
    full_file = tmp_path / "full.fit.json"
    argv = ["fit", str(mixed), "--method", method, "--save", str(full_file)]
    assert main(argv) == 0
    full = json.loads(full_file.read_text())
    assert full["recipe"] == "full" and full["n_observations"] == n_rows
    assert full["params"] != document["params"]  # two laws, each of its own rows
    capsys.readouterr()
    point = ["--n0", "2e9", "--rho", "0.2", "--l0", "2.6", "--tokens", "1e9"]
    lora_file = str(mixed.with_suffix(".fit.json"))
    assert main(["predict", "--fit", lora_file, *point, "--recipe", "full"]) == 2
    assert "fitted on recipe 'lora'" in capsys.readouterr().err
    assert main(["predict", "--fit", lora_file, *point, "--recipe", "lora"]) == 0
    assert main(["predict", "--fit", lora_file, *point]) == 0
    assert main(["fit", str(mixed), "--method", method, "--recipe", "distill"]) == 2
    assert "recipe='distill'" in capsys.readouterr().err
