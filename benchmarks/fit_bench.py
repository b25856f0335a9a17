"""Fit speed: our vectorised-grid fit vs an Epoch-style fit, on 300 synthetic observations.

Epoch-style (the Chinchilla replication's method): L-BFGS-B from every point of a 4,500-point
grid of starts, one start at a time, keeping the best. It gets the same objective (summed Huber,
δ = 1e-3, on log residuals), the same analytic gradient, the same bounds and the same one-thread
BLAS setting as ours, and scipy's default stopping rules, so the comparison is of the search
strategy only. Also times a 100-refit bootstrap by run.

Run from the repository root: `python benchmarks/fit_bench.py` (≈ 5–20 min, the Epoch-style
part dominates); writes benchmarks/results/fit_bench.json. Targets (issue 2): ours ≤ 2 s and
≤ 0.05 × Epoch-style, with an objective no worse.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from app.law.blas import single_thread  # noqa: E402
from app.law.bootstrap import refit_runs  # noqa: E402
from app.law.fitting import fit, objective_function  # noqa: E402
from app.law.forms import get_form  # noqa: E402
from app.law.synthetic import SYNTHETIC_P2, make_rows  # noqa: E402
from app.law.types import Dataset  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "fit_bench.json"
# 5 sizes × 4 pruning rates × 15 checkpoints = 300 observations of one method.
SIZES = ((0.5e9, 3.0), (1e9, 2.75), (3e9, 2.45), (8e9, 2.2), (14e9, 2.05))
RHOS = (0.15, 0.25, 0.35, 0.45)
EPOCH_STARTS = 4500
T = TypeVar("T")


def dataset() -> Dataset:
    rows = make_rows(
        params_by_method={"depth": SYNTHETIC_P2["depth"]}, sizes=SIZES, rhos=RHOS, seed=11
    )
    return Dataset.from_rows(rows)


def timed(fn: Callable[[], T], repeats: int) -> tuple[list[float], list[float], T]:
    """Wall and CPU seconds of each of `repeats` calls, and the last call's result."""
    walls: list[float] = []
    cpus: list[float] = []
    out: T | None = None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    assert out is not None
    return walls, cpus, out


@dataclass(frozen=True)
class EpochResult:
    n_starts: int
    wall_s: float
    cpu_s: float
    objective: float
    n_converged: int
    params: dict[str, float]


def epoch_style(data: Dataset, n_starts: int) -> EpochResult:
    """L-BFGS-B (scipy defaults) from each start of a 4,500-point grid, one at a time."""
    law = get_form("p2")
    rng = np.random.default_rng(0)
    grid = law.start_grid(data)
    starts = grid[rng.choice(grid.shape[0], size=min(n_starts, grid.shape[0]), replace=False)]
    fun = objective_function(law, data)
    bounds = law.bounds(data)
    best_x, best_value, n_converged = starts[0], np.inf, 0
    w, c = time.perf_counter(), time.process_time()
    with single_thread():
        for x0 in starts:
            res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds)
            value = fun(res.x)[0]
            n_converged += bool(res.success)
            if value < best_value:
                best_x, best_value = res.x, value
    return EpochResult(
        n_starts=int(starts.shape[0]),
        wall_s=time.perf_counter() - w,
        cpu_s=time.process_time() - c,
        objective=float(best_value),
        n_converged=n_converged,
        params=law.from_vector(best_x, data),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epoch-starts", type=int, default=EPOCH_STARTS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    data = dataset()
    fit("p2", data)  # warm-up: imports, caches, first-touch allocations
    walls, cpus, ours = timed(lambda: fit("p2", data), args.repeats)
    ours_wall, ours_cpu = statistics.median(walls), statistics.median(cpus)
    print(f"ours: median wall {ours_wall:.3f} s, cpu {ours_cpu:.3f} s")

    b_walls, b_cpus, refits = timed(lambda: refit_runs("p2", data, ours, 100, seed=0), 1)
    print(f"bootstrap 100 refits: wall {b_walls[0]:.2f} s, cpu {b_cpus[0]:.2f} s")

    epoch = epoch_style(data, args.epoch_starts)
    print(f"epoch-style: wall {epoch.wall_s:.1f} s, cpu {epoch.cpu_s:.1f} s")

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            # Other processes share these cores: CPU seconds are the steadier comparison.
            "load_average": list(os.getloadavg()),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "platform": platform.platform(),
        },
        "data": {
            "observations": len(data),
            "runs": data.n_runs,
            "noise": 0.005,
            "law": SYNTHETIC_P2["depth"],
        },
        "ours": {
            "n_starts": ours.n_starts,
            "wall_s_median": ours_wall,
            "cpu_s_median": ours_cpu,
            "wall_s_runs": walls,
            "objective": ours.objective,
            "converged": ours.converged,
            "params": ours.params,
        },
        "epoch_style": asdict(epoch),
        "ratio_wall": ours_wall / epoch.wall_s,
        "ratio_cpu": ours_cpu / epoch.cpu_s,
        "objective_no_worse": bool(ours.objective <= epoch.objective * (1 + 1e-9)),
        "bootstrap_100": {"wall_s": b_walls[0], "cpu_s": b_cpus[0], "refits": len(refits)},
        "targets": {"ours_wall_s_max": 2.0, "ratio_max": 0.05, "bootstrap_100_wall_s_max": 15.0},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("ratio_wall", "ratio_cpu", "objective_no_worse")}))
    print(f"ours objective {ours.objective:.12g} vs epoch-style {epoch.objective:.12g}")


if __name__ == "__main__":
    main()
