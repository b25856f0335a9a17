"""Time `POST /fits` with a 100-refit bootstrap on 300 observations, through the HTTP stack.

Issue 2's speed target: the request answers in ≤ 15 s on the 2-core machine. The script
migrates a temporary SQLite database, uploads 300 synthetic observations (app.law.synthetic:
20 runs × 15 checkpoints, 0.5% noise — clearly synthetic) with `POST /observations`, then sends
`POST /fits {"bootstrap": 100}` REPEATS times in-process (ASGI, no network) and records each
answer's wall time. Results go to benchmarks/results/fits_bench.json.

    .venv/bin/python benchmarks/fits_bench.py [--repeats 3] [--bootstrap 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fits_bench.json"


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=100)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="p2law-fits-bench-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["BROKER_DIR"] = str(workdir / "broker")
    sys.path.insert(0, str(ROOT))
    from dataclasses import asdict

    from fastapi.testclient import TestClient

    from app.db.migrate import upgrade
    from app.law.synthetic import SYNTHETIC_P2, make_rows
    from app.main import create_app

    upgrade()
    method = next(iter(SYNTHETIC_P2))
    rows = make_rows(
        params_by_method={method: SYNTHETIC_P2[method]},
        sizes=((0.5e9, 3.0), (1e9, 2.75), (3e9, 2.45), (8e9, 2.2), (13e9, 2.1)),
        rhos=(0.15, 0.2, 0.25, 0.35),
    )
    observations = []
    for row in rows:
        values = asdict(row)
        values.pop("true_loss")
        observations.append(values)
    assert len(observations) == 300, len(observations)

    times: list[float] = []
    with TestClient(create_app()) as client:
        answer = client.post("/observations", json={"observations": observations})
        answer.raise_for_status()
        body = {"form": "p2", "method": method, "bootstrap": args.bootstrap}
        for _ in range(args.repeats):
            start = time.perf_counter()
            answer = client.post("/fits", json=body)
            times.append(time.perf_counter() - start)
            answer.raise_for_status()
    fit = answer.json()
    result = {
        "benchmark": (
            f"POST /fits, p2, {len(observations)} observations, bootstrap {args.bootstrap}"
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": times,
        "median_s": statistics.median(times),
        "converged": fit["converged"],
        "n_runs": fit["n_runs"],
        "target_s_max": 15.0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
