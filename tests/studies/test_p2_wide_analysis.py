"""The analysis of the wide pass (studies/p2_wide_analysis.py) on synthetic runs.

No model is trained here: cached run results are made from the engine's synthetic law, and the
analysis is run over them as `--analyse-only` would, with two forms and two bootstrap refits to
stay fast. It checks the files the pass commits: observations.csv uploads as is (three families),
controls.csv, fits.json covers every protocol the data allow (no N0 for a one-size family), with
metrics, coverage per interval method and `auto`, and summary.md has their rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.law.synthetic import SYNTHETIC_P2, make_rows
from app.schemas.observations import CSV_COLUMNS, CSV_OPTIONAL
from app.services.observations import parse_csv
from studies import p2_wide as wide
from studies import p2_wide_analysis as analysis


def _results(family: str, sizes: tuple[tuple[float, float], ...], seed: int) -> list[Any]:
    """Pipeline-style cached results (as run_pruned writes them) of synthetic depth runs,
    and one dense control per size."""
    rows = make_rows(
        params_by_method={"depth": SYNTHETIC_P2["depth"]},
        sizes=sizes,
        n_checkpoints=7,
        seed=seed,
    )
    by_run: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_run[r.run_id].append(r)
    out: list[dict[str, Any]] = []
    for rid, pts in by_run.items():
        first = pts[0]
        size = f"{first.n0:.0f}"
        out.append(
            {
                "run_id": f"{family}-{rid}",
                "family": family,
                "size": size,
                "method": "depth",
                "target_rho": round(first.rho, 2),
                "status": "succeeded",
                "measured": {
                    "n0": int(first.n0),
                    "n_after": int(first.n0 * (1 - first.rho)),
                    "rho": first.rho,
                    "l0": first.l0,
                    "eval_noise": 0.01,
                    "loss_after_prune": first.l0 + 1.0,
                    "protocol": "eval:0123456789abcdef:seq128:n2048",
                },
                "points": [
                    {"tokens": int(p.tokens), "loss": p.loss, "below_l0": False} for p in pts
                ],
            }
        )
    for n0, l0 in sizes:
        out.append(
            {
                "run_id": f"{family}-{n0:.0f}-dense-control",
                "family": family,
                "size": f"{n0:.0f}",
                "n0": int(n0),
                "l0": l0,
                "eval_noise": 0.01,
                "protocol": "eval:0123456789abcdef:seq128:n2048",
                "points": [{"tokens": 1000, "loss": l0 + 0.001}, {"tokens": 2000, "loss": l0}],
            }
        )
    return out


def test_analysis_writes_every_output(tmp_path: Path) -> None:
    small = replace(wide.QUICK["llama"], methods=("depth",), bootstrap=2)
    smol = replace(wide.QUICK["smollm2"], methods=("depth",), bootstrap=2)
    families: dict[str, tuple[Any, dict[str, Any], list[Any]]] = {
        "llama": (small, {}, _results("wide-llama", ((0.5e9, 3.0), (1.0e9, 2.75)), 1)),
        "smollm2": (smol, {}, _results("smollm2-135m", ((0.135e9, 2.5),), 2)),
    }
    opts = analysis.Options(forms=("p2", "curve"), plots=False, cache=tmp_path / "cache")
    report = analysis.analyse_all(families, tmp_path, options=opts)

    text = (tmp_path / "observations.csv").read_text()
    assert text.splitlines()[0].split(",") == [*CSV_COLUMNS, *CSV_OPTIONAL]
    parsed = parse_csv(text, max_rows=1000)
    assert {r["family"] for r in parsed} == {"wide-llama", "smollm2-135m"}
    assert len((tmp_path / "controls.csv").read_text().splitlines()) == 1 + 3 * 2

    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["forms"] == ["p2", "curve"]
    llama = fits["families"]["wide-llama"]["methods"]["depth"]
    assert llama["protocols"] == ["all", "D", "N0", "rho"]
    assert fits["families"]["smollm2-135m"]["methods"]["depth"]["protocols"] == ["all", "D", "rho"]
    p2_n0 = llama["fits"]["N0"]["p2"]
    assert p2_n0["test_metrics"]["mape"] < 5.0
    assert set(analysis.COVERAGE_METHODS) <= set(p2_n0["coverage"])
    assert 0.0 <= p2_n0["coverage"]["bootstrap"] <= 1.0
    assert "error" in llama["fits"]["N0"]["curve"]  # one law per run: no N0 extrapolation
    assert "holdout_metrics" in llama["fits"]["D"]["curve"]
    assert "chosen" in llama["fits"]["D"]["auto"] or "error" in llama["fits"]["D"]["auto"]
    assert report["families"]["wide-llama"]["controls"]

    summary = (tmp_path / "summary.md").read_text()
    for proto in ("| all |", "| D |", "| N0 |", "| rho |"):
        assert proto in summary
    assert "auto" in summary

    # A rerun over the same inputs reads the cached (family, method) results.
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    analysis.analyse_all(families, tmp_path / "again", options=opts)
    first, second = (
        json.loads((d / "fits.json").read_text()) for d in (tmp_path, tmp_path / "again")
    )
    assert json.dumps(first["families"]) == json.dumps(second["families"])
