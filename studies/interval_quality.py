"""Held-out error and interval coverage of every form and of `auto`, per family, method and
protocol, on a study's observations.

For each (family, method) and generalisation protocol (D, N0, ρ; docs/law.md §6) the data
allow, each form is fitted on the protocol's train side and judged on its held-out side, exactly
as `POST /fits` measures a fit's coverage (`app.law.intervals.check_protocol`): the law's
held-out MAPE, and the share of held-out points inside the 80% prediction interval (calibrated
on the train side only) and inside the 80% confidence interval (bootstrap refits by run).

`auto` is nested: the form is chosen on the train side only (`app.law.select.select_form` with
the protocol as `select_by` when the train side can be split that way again, else whole-run
folds), then judged on the held-out side like any form.

    python -m studies.interval_quality --csv studies/results/observations.csv --out studies/results

Writes ``interval_quality.json`` (every cell) and ``interval_quality.md`` (the tables, with the
goals of the issue: coverage 70–90% per protocol; auto's worst MAPE at most half of P²'s).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from app.law import FORMS, Dataset, LawError
from app.law.intervals import check_protocol
from app.law.metrics import split
from app.law.select import select_form
from studies.planning_quality import read_rows

PROTOCOLS = ("D", "N0", "rho")
AUTO = "auto"


def _chosen(data: Dataset, protocol: str) -> tuple[str, str]:
    """The form `auto` keeps on the train side of `protocol`, and the use it chose by."""
    mask_train, _ = split(data, protocol)  # type: ignore[arg-type]
    train = data.take(mask_train)
    try:
        return select_form(train, protocol).chosen, protocol
    except LawError:
        return select_form(train, "runs").chosen, "runs"


def cells(
    rows: Sequence[dict[str, Any]], forms: Sequence[str], level: float, bootstrap: int
) -> list[dict[str, Any]]:
    """Every (protocol, form) cell of one family and method."""
    data = Dataset.from_rows(rows)
    family, method = rows[0]["family"], rows[0]["method"]
    out: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        for form in (*forms, AUTO):
            cell: dict[str, Any] = {
                "family": family,
                "method": method,
                "protocol": protocol,
                "form": form,
            }
            started = time.perf_counter()
            try:
                actual = form
                if form == AUTO:
                    actual, cell["select_by"] = _chosen(data, protocol)
                    cell["chosen"] = actual
                c = check_protocol(
                    actual,
                    data,
                    protocol,  # type: ignore[arg-type]
                    level=level,
                    bootstrap=bootstrap,
                )
            except LawError as exc:
                cell["error"] = str(exc)[:200]
                out.append(cell)
                continue
            cell |= {
                "mape": c.mape,
                "prediction": c.prediction,
                "confidence": c.confidence,
                "points": c.points,
                "runs": c.runs,
                "pools": c.pools,
                "seconds": round(time.perf_counter() - started, 2),
            }
            out.append(cell)
            print(
                f"{family} {method} {protocol} {form}"
                f"{'→' + str(cell.get('chosen')) if form == AUTO else ''}: MAPE {c.mape:.3g}% "
                f"coverage {c.prediction:.2f} (confidence {c.confidence})",
                flush=True,
            )
    return out


def pooled(items: Sequence[dict[str, Any]]) -> tuple[float | None, int]:
    """Coverage over all held-out points of `items` (weighted by points), and the points."""
    ok = [c for c in items if "prediction" in c]
    points = sum(int(c["points"]) for c in ok)
    if not points:
        return None, 0
    return sum(c["prediction"] * c["points"] for c in ok) / points, points


def write_markdown(all_cells: Sequence[dict[str, Any]], forms: Sequence[str], path: Path) -> None:
    by_group: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in all_cells:
        by_group[(c["family"], c["method"])].append(c)
    lines = [
        "# Held-out error and interval coverage per form",
        "",
        "Held-out MAPE (%) / share of held-out points inside the 80% prediction interval, per",
        "family, method and protocol; `auto` is chosen on the train side only (→ the form it",
        "chose). Written by `studies/interval_quality.py`.",
        "",
    ]
    header = "| family | method | protocol | " + " | ".join([*forms, AUTO]) + " |"
    lines += [header, "|" + "---|" * (3 + len(forms) + 1)]
    for (family, method), items in sorted(by_group.items()):
        for protocol in PROTOCOLS:
            row = {c["form"]: c for c in items if c["protocol"] == protocol}
            if not any("mape" in c for c in row.values()):
                continue
            cells_md = []
            for form in (*forms, AUTO):
                c = row.get(form, {})
                if "mape" not in c:
                    cells_md.append("—")
                    continue
                text = f"{c['mape']:.2f} / {c['prediction']:.0%}"
                if form == AUTO:
                    text += f" → {c['chosen']}"
                cells_md.append(text)
            lines.append(f"| {family} | {method} | {protocol} | " + " | ".join(cells_md) + " |")
    lines += [
        "",
        "## Coverage of the 80% prediction interval, pooled over families and methods",
        "",
        "| protocol | " + " | ".join([*forms, AUTO]) + " |",
        "|---|" + "---|" * (len(forms) + 1),
    ]
    for protocol in PROTOCOLS:
        parts = []
        for form in (*forms, AUTO):
            share, points = pooled(
                [c for c in all_cells if c["protocol"] == protocol and c["form"] == form]
            )
            parts.append("—" if share is None else f"{share:.0%} ({points})")
        lines.append(f"| {protocol} | " + " | ".join(parts) + " |")
    lines += ["", "## Worst held-out MAPE over method × protocol cells, per family", ""]
    lines += [
        "| family | " + " | ".join([*forms, AUTO]) + " |",
        "|---|" + "---|" * (len(forms) + 1),
    ]
    for family in sorted({c["family"] for c in all_cells}):
        worst = []
        for form in (*forms, AUTO):
            mapes = [
                c["mape"]
                for c in all_cells
                if c["family"] == family and c["form"] == form and "mape" in c
            ]
            worst.append(f"{max(mapes):.2f}" if mapes else "—")
        lines.append(f"| {family} | " + " | ".join(worst) + " |")
    path.write_text("\n".join(lines) + "\n")


def _job(args: tuple[list[dict[str, Any]], list[str], float, int]) -> list[dict[str, Any]]:
    return cells(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--forms", nargs="+", default=[f for f in FORMS if f != "curve"])
    parser.add_argument("--level", type=float, default=0.8)
    parser.add_argument("--bootstrap", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--families", nargs="*")
    args = parser.parse_args(argv)
    rows = read_rows(args.csv)
    if args.families:
        rows = [r for r in rows if r["family"] in set(args.families)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["method"])].append(r)
    started = time.perf_counter()
    jobs = [(g, list(args.forms), args.level, args.bootstrap) for _, g in sorted(groups.items())]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        all_cells = [c for result in pool.map(_job, jobs) for c in result]
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "config": {
            "csv": [str(p) for p in args.csv],
            "forms": list(args.forms),
            "level": args.level,
            "bootstrap": args.bootstrap,
            "seconds": round(time.perf_counter() - started, 1),
            "numpy": np.__version__,
        },
        "cells": all_cells,
    }
    (args.out / "interval_quality.json").write_text(json.dumps(document, indent=1) + "\n")
    write_markdown(all_cells, list(args.forms), args.out / "interval_quality.md")
    print((args.out / "interval_quality.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
