"""Which law form to register beside P², chosen by held-out error on the study's observations.

For each pruning method of `studies/results/observations.csv` and each use (`select_by` D, N0,
rho and runs; docs/law.md §4), every registered form and the candidate forms below are scored
with `app.law.select` exactly as `form: "auto"` scores them: fitted on the train side of each
fold, held-out MAPE on the other side, averaged over the folds. Candidates:

- ``p2-shift``: P² with a shifted token axis, D_C / (D + D_s)^β (D and D_s in billions): the
  flat start of a run while the learning rate warms up;
- ``p2-tpp-noshift``: the registered ``p2-tpp`` with T_s fixed at (practically) zero, to see
  what the shift adds to the tokens-per-parameter axis;
- the registered ``p2-tpp`` itself: P² on tokens per parameter, shifted, with no N0^(−δ)
  factor.

Writes ``form_selection.json`` (every comparison table, with folds) and ``form_selection.md``
(held-out MAPE per method × use, what `auto` chooses among the registered forms, and the
comparison with P²) into ``--out`` (default ``studies/results``):

    python studies/form_selection.py
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from app.law.forms import (
    FORMS,
    LOG_CONSTANT_BOUNDS,
    P2Form,
    P2TppForm,
    _col,
    logsumexp_terms,
    register,
)
from app.law.select import SELECT_BY, Selection, select_form
from app.law.types import Dataset, Features, FloatArray

ROOT = Path(__file__).resolve().parents[1]
OBSERVATIONS = ROOT / "studies" / "results" / "observations.csv"
METHODS = ("depth", "width", "2:4")
PROTOCOLS = ("D", "N0", "rho")
_LOG_MAX = 700.0


class P2ShiftForm(P2Form):
    """Candidate: L = L0 + (1/ρ)^γ (1/N0)^δ (N_C/N0^α + D_C/(D + D_s)^β + E), D, D_s in
    billions of tokens, D_s ≥ 0 fitted as log D_s (measurement only, not registered)."""

    name = "p2-shift"
    param_names = (*P2Form.param_names, "D_s")
    _fit_names = (*P2Form._fit_names, "log_D_s")
    _bounds = (*P2Form._bounds, LOG_CONSTANT_BOUNDS)

    def start_grid(self, data: Dataset) -> FloatArray:
        # p2's grid × D_s of 1e-6, 1.7e-5 and 3.4e-4 billion tokens (1k to 340k tokens).
        base = super().start_grid(data)
        shifts = np.array([-14.0, -11.0, -8.0])
        return np.array(
            [np.append(row, s) for row, s in itertools.product(base, shifts)], dtype=np.float64
        )

    def to_vector(self, params: Any, data: Dataset | None = None) -> FloatArray:
        with np.errstate(divide="ignore"):
            return np.append(super().to_vector(params), np.log(float(params["D_s"])))

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        out = super().from_vector(theta[:7])
        out["D_s"] = float(np.exp(theta[7]))
        return out

    def _log_gap(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        ln_n = np.log(x.n0 / 1e9)
        ln_rho = np.log(x.rho)
        shape = (theta.shape[0], len(x))
        ln_u, (_, w_s) = logsumexp_terms(
            [np.broadcast_to(np.log(x.tokens / 1e9), shape), _col(theta, 7)]
        )
        a1 = _col(theta, 0) - _col(theta, 3) * ln_n
        a2 = _col(theta, 1) - _col(theta, 4) * ln_u
        a3 = np.broadcast_to(_col(theta, 2), shape)
        log_g, (w1, w2, w3) = logsumexp_terms([a1, a2, a3])
        u = np.minimum(-_col(theta, 5) * ln_rho - _col(theta, 6) * ln_n + log_g, _LOG_MAX)
        log_pred = np.logaddexp(np.log(x.l0), u)
        if not grad:
            return u, log_pred, None
        s = np.exp(u - log_pred)
        jac = np.stack(
            [
                s * w1,
                s * w2,
                s * w3,
                -s * w1 * ln_n,
                -s * w2 * ln_u,
                -s * ln_rho,
                -s * ln_n,
                -s * w2 * _col(theta, 4) * w_s,
            ],
            axis=-1,
        )
        return u, log_pred, jac

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        u, _, _ = self._log_gap(np.asarray(thetas, dtype=np.float64), x, grad=False)
        return np.asarray(x.l0 + np.exp(u), dtype=np.float64)

    def predict(self, params: Any, x: Features) -> FloatArray:
        return np.asarray(self.predict_many(self.to_vector(params)[None, :], x)[0])

    def params_matrix(self, params_list: Any) -> FloatArray:
        return np.array([self.to_vector(p) for p in params_list], dtype=np.float64)


class P2TppNoShiftForm(P2TppForm):
    """Candidate: p2-tpp with T_s held at e^−25 ≈ 1e-11 tokens per parameter (no shift)."""

    name = "p2-tpp-noshift"
    _bounds = (*P2TppForm._bounds[:6], (-25.0, -25.0))

    def start_grid(self, data: Dataset) -> FloatArray:
        grid = super().start_grid(data)
        return np.unique(np.column_stack([grid[:, :6], np.full(len(grid), -25.0)]), axis=0)


CANDIDATES = ("p2-shift", "p2-tpp-noshift")


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("n0", "rho", "l0", "tokens", "loss"):
            r[key] = float(r[key])
    return rows


def chosen_among(selection: Selection, names: tuple[str, ...]) -> tuple[str, float]:
    """The form `auto` keeps when only `names` are registered (ties to p2, then order)."""
    scored = {
        row.form: row.mean_mape
        for row in selection.table
        if row.form in names and row.mean_mape is not None
    }
    best = min(scored.values())
    tied = [f for f in names if f in scored and scored[f] <= best * (1 + 1e-9)]
    form = "p2" if "p2" in tied else tied[0]
    return form, scored[form]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=Path, default=OBSERVATIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "studies" / "results")
    args = parser.parse_args(argv)

    for form in (P2ShiftForm(), P2TppNoShiftForm()):
        if form.name not in FORMS:
            register(form)
    registered = tuple(name for name in FORMS if name not in CANDIDATES)
    every = (*registered, *CANDIDATES)
    rows = load(args.observations)
    report: dict[str, Any] = {
        "observations": str(args.observations.relative_to(ROOT)),
        "registered": list(registered),
        "candidates": list(CANDIDATES),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "cells": {},
    }
    started = time.perf_counter()
    for method in METHODS:
        data = Dataset.from_rows([r for r in rows if r["method"] == method])
        for select_by in SELECT_BY:
            t0 = time.perf_counter()
            selection = select_form(data, select_by, forms=every)
            auto, auto_mape = chosen_among(selection, registered)
            before, before_mape = chosen_among(
                selection, tuple(f for f in registered if f != "p2-tpp")
            )
            p2 = next(row for row in selection.table if row.form == "p2")
            report["cells"][f"{method}/{select_by}"] = {
                "method": method,
                "select_by": select_by,
                "seconds": round(time.perf_counter() - t0, 1),
                "auto": auto,
                "auto_mape": auto_mape,
                "auto_without_p2_tpp": before,
                "auto_without_p2_tpp_mape": before_mape,
                "p2_mape": p2.mean_mape,
                "selection": selection.as_dict(),
            }
            print(f"{method:>6} {select_by:>4}: auto {auto} {auto_mape:.2f}%", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    cells = report["cells"].values()
    protocol_cells = [c for c in cells if c["select_by"] in PROTOCOLS]
    worst_auto = max(c["auto_mape"] for c in protocol_cells)
    worst_p2 = max(c["p2_mape"] for c in protocol_cells)
    report["summary"] = {
        "worst_auto_mape": worst_auto,
        "worst_p2_mape": worst_p2,
        "worst_ratio": worst_auto / worst_p2,
        "worst_auto_without_p2_tpp_mape": max(
            c["auto_without_p2_tpp_mape"] for c in protocol_cells
        ),
        "cells_worse_than_p2": [
            k for k, c in report["cells"].items() if c["auto_mape"] > c["p2_mape"] * (1 + 1e-9)
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "form_selection.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "form_selection.md").write_text(summary_markdown(report, every))
    return 0


def summary_markdown(report: dict[str, Any], forms: tuple[str, ...]) -> str:
    lines = [
        "# Held-out MAPE (%) per form, method and use (studies/form_selection.py)",
        "",
        f"Observations: `{report['observations']}`. Each cell is the mean held-out MAPE over the "
        "folds of that use (D, N0, rho: one fold, the protocol of docs/law.md §6; runs: "
        "grouped K-fold over whole runs). `auto` is the form chosen among the registered forms "
        f"({', '.join(report['registered'])}); `—`: the form cannot predict the fold. "
        f"Candidates not registered: {', '.join(report['candidates'])}.",
        "",
        "| method | use | " + " | ".join(forms) + " | auto | auto without p2-tpp |",
        "|---|---|" + "---|" * (len(forms) + 2),
    ]
    for cell in report["cells"].values():
        by_form = {row["form"]: row["mean_mape"] for row in cell["selection"]["table"]}
        values = " | ".join("—" if by_form[f] is None else f"{by_form[f]:.2f}" for f in forms)
        lines.append(
            f"| {cell['method']} | {cell['select_by']} | {values} | "
            f"{cell['auto']} {cell['auto_mape']:.2f} | "
            f"{cell['auto_without_p2_tpp']} {cell['auto_without_p2_tpp_mape']:.2f} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"Worst method × protocol (D, N0, rho) held-out MAPE: auto {s['worst_auto_mape']:.2f}%, "
        f"P² {s['worst_p2_mape']:.2f}% (ratio {s['worst_ratio']:.2f}); auto without p2-tpp "
        f"{s['worst_auto_without_p2_tpp_mape']:.2f}%. Cells where auto is worse than P²: "
        f"{', '.join(s['cells_worse_than_p2']) or 'none'}. Wall time {report['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
