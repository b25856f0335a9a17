"""Which law form to register beside P², chosen by held-out error on the study's observations.

For each pruning method of the study's observations and each use (`select_by` D, N0,
rho and runs; docs/law.md §4), every registered form and the candidate below are scored with
`app.law.select` exactly as `form: "auto"` scores them: fitted on the train side of each fold,
held-out MAPE on the other side, averaged over the folds. The two forms this measurement added
to the registry are scored with the others:

- ``p2-tpp``: P² on tokens per parameter, shifted, with no N0^(−δ) factor;
- ``p2-shift``: P² with a shifted token axis, D_C / (D + D_s)^β (D and D_s in billions): the
  flat start of a run while the learning rate warms up;

and one candidate that was not registered:

- ``p2-tpp-noshift``: ``p2-tpp`` with T_s fixed at (practically) zero, to see what the shift
  adds to the tokens-per-parameter axis.

Both passes of the study are measured (the main pass and the longer pass on the two smaller
sizes). Writes ``form_selection.json`` (every comparison table, with folds) and
``form_selection.md`` (held-out MAPE per method × use, what `auto` chooses among the registered
forms, and the comparison with P²) into ``--out`` (default ``studies/results``):

    python -m studies.form_selection
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from app.law.errors import LawError
from app.law.forms import (
    FORMS,
    P2TppForm,
    register,
)
from app.law.select import SELECT_BY, Selection, choose, select_form
from app.law.types import Dataset, FloatArray

ROOT = Path(__file__).resolve().parents[1]
#: The study's main pass (three sizes, 2.5 × N0 tokens) and its longer pass (S and M only,
#: 10 × N0 tokens), docs/study.md.
PASSES = {
    "main": ROOT / "studies" / "results" / "observations.csv",
    "long": ROOT / "studies" / "results" / "long" / "observations.csv",
}
METHODS = ("depth", "width", "2:4")
PROTOCOLS = ("D", "N0", "rho")


class P2TppNoShiftForm(P2TppForm):
    """Candidate: p2-tpp with T_s held at e^−25 ≈ 1e-11 tokens per parameter (no shift)."""

    name = "p2-tpp-noshift"
    _bounds = (*P2TppForm._bounds[:6], (-25.0, -25.0))

    def start_grid(self, data: Dataset) -> FloatArray:
        grid = super().start_grid(data)
        return np.unique(np.column_stack([grid[:, :6], np.full(len(grid), -25.0)]), axis=0)


CANDIDATES = ("p2-tpp-noshift",)
#: The forms registered before this measurement.
ORIGINAL = ("p2", "frantar", "compression", "curve")


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("n0", "rho", "l0", "tokens", "loss"):
            r[key] = float(r[key])
    return rows


def chosen_among(selection: Selection, names: tuple[str, ...]) -> tuple[str, float]:
    """The form `auto` keeps when only `names` are registered, and its mean held-out MAPE."""
    rows = [row for row in selection.table if row.form in names]
    form = choose(rows)
    mape = next(row.mean_mape for row in rows if row.form == form)
    assert mape is not None
    return form, mape


def measure_pass(
    rows: list[dict[str, Any]], registered: tuple[str, ...], every: tuple[str, ...]
) -> dict[str, Any]:
    """Every method × use of one pass of the study: the comparison and what `auto` keeps."""
    cells: dict[str, Any] = {}
    for method in METHODS:
        data = Dataset.from_rows([r for r in rows if r["method"] == method])
        for select_by in SELECT_BY:
            t0 = time.perf_counter()
            try:
                selection = select_form(data, select_by, forms=every)
            except LawError as exc:
                cells[f"{method}/{select_by}"] = {
                    "method": method,
                    "select_by": select_by,
                    "error": str(exc),
                }
                print(f"{method:>6} {select_by:>4}: {exc}", flush=True)
                continue
            auto, auto_mape = chosen_among(selection, registered)
            before, before_mape = chosen_among(selection, ORIGINAL)
            p2 = next(row for row in selection.table if row.form == "p2")
            cells[f"{method}/{select_by}"] = {
                "method": method,
                "select_by": select_by,
                "seconds": round(time.perf_counter() - t0, 1),
                "auto": auto,
                "auto_mape": auto_mape,
                "auto_original": before,
                "auto_original_mape": before_mape,
                "p2_mape": p2.mean_mape,
                "selection": selection.as_dict(),
            }
            print(f"{method:>6} {select_by:>4}: auto {auto} {auto_mape:.2f}%", flush=True)
    scored = [c for c in cells.values() if "error" not in c and c["select_by"] in PROTOCOLS]
    worst_auto = max(c["auto_mape"] for c in scored)
    worst_p2 = max(c["p2_mape"] for c in scored)
    summary = {
        "worst_auto_mape": worst_auto,
        "worst_p2_mape": worst_p2,
        "worst_ratio": worst_auto / worst_p2,
        "worst_auto_original_mape": max(c["auto_original_mape"] for c in scored),
        "cells_worse_than_p2": [
            k
            for k, c in cells.items()
            if "error" not in c and c["auto_mape"] > c["p2_mape"] * (1 + 1e-9)
        ],
    }
    return {"cells": cells, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "studies" / "results")
    args = parser.parse_args(argv)

    if P2TppNoShiftForm.name not in FORMS:
        register(P2TppNoShiftForm())
    registered = tuple(name for name in FORMS if name not in CANDIDATES)
    every = (*registered, *CANDIDATES)
    report: dict[str, Any] = {
        "registered": list(registered),
        "candidates": list(CANDIDATES),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "passes": {},
    }
    for name, path in PASSES.items():
        started = time.perf_counter()
        print(f"{name} pass: {path.relative_to(ROOT)}", flush=True)
        result = measure_pass(load(path), registered, every)
        result["observations"] = str(path.relative_to(ROOT))
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["passes"][name] = result
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "form_selection.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "form_selection.md").write_text(summary_markdown(report, every))
    return 0


def summary_markdown(report: dict[str, Any], forms: tuple[str, ...]) -> str:
    lines = [
        "# Held-out MAPE (%) per form, method and use (studies/form_selection.py)",
        "",
        "Each cell is the mean held-out MAPE over the folds of that use (D, N0, rho: one fold, "
        "the protocol of docs/law.md §6; runs: grouped K-fold over whole runs). `auto` is the "
        f"form chosen among the registered forms ({', '.join(report['registered'])}); `—`: the "
        "form cannot predict the fold. `auto of the original four`: the choice among p2, "
        "frantar, compression and curve, the forms registered before this measurement. "
        f"Candidates measured but not registered: {', '.join(report['candidates'])}.",
    ]
    for name, result in report["passes"].items():
        lines += [
            "",
            f"## {name} pass: `{result['observations']}`",
            "",
            "| method | use | " + " | ".join(forms) + " | auto | auto of the original four |",
            "|---|---|" + "---|" * (len(forms) + 2),
        ]
        for cell in result["cells"].values():
            if "error" in cell:
                lines.append(
                    f"| {cell['method']} | {cell['select_by']} | no fold: {cell['error']} |"
                )
                continue
            by_form = {row["form"]: row["mean_mape"] for row in cell["selection"]["table"]}
            values = " | ".join("—" if by_form[f] is None else f"{by_form[f]:.2f}" for f in forms)
            lines.append(
                f"| {cell['method']} | {cell['select_by']} | {values} | "
                f"{cell['auto']} {cell['auto_mape']:.2f} | "
                f"{cell['auto_original']} {cell['auto_original_mape']:.2f} |"
            )
        s = result["summary"]
        lines += [
            "",
            f"Worst method × protocol (D, N0, rho) held-out MAPE: auto {s['worst_auto_mape']:.2f}%,"
            f" P² {s['worst_p2_mape']:.2f}% (ratio {s['worst_ratio']:.2f}); auto of the original "
            f"four forms {s['worst_auto_original_mape']:.2f}%. Cells where auto is worse than P²: "
            f"{', '.join(s['cells_worse_than_p2']) or 'none'}. Wall time {result['seconds']} s.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
