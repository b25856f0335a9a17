"""Throughput of `POST /predict` (100 points per request) against `GET /health`.

Issue 2's speed target: with one uvicorn worker, /predict with 100 points reaches at least
half the requests per second of /health measured in the same run.

The script migrates a temporary SQLite database, stores synthetic observations (clearly
synthetic: app.law.synthetic) and a P² fit, starts `uvicorn app.main:app` with one worker on a
free 127.0.0.1 port, then runs a closed-loop load against each route from CLIENTS separate
processes (so the load generator is not one GIL), each with one keep-alive connection, in
alternating rounds (DURATION seconds per route in all). The ratio is of the totals; the
per-round ratios show the noise. Results go to benchmarks/results/predict_bench.json.

    .venv/bin/python benchmarks/predict_bench.py [--duration 12] [--clients 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict_bench.json"
POINTS_PER_REQUEST = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seed_database(url: str) -> str:
    """Migrate, store synthetic observations and one fit; return the fit's id."""
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = url
    from app.db.migrate import upgrade
    from app.db.session import session_scope
    from app.law.synthetic import make_rows
    from app.services.fits import create_fit
    from app.services.observations import add_observations

    upgrade(url)
    rows = []
    for row in make_rows(params_by_method={"depth": _p2_params()}, n_checkpoints=8):
        values = asdict(row)
        values.pop("true_loss")
        rows.append(values)
    with session_scope() as session:
        add_observations(session, rows)
        fit = create_fit(session, family=rows[0]["family"], method="depth", make_default=True)
        return fit.id


def _p2_params() -> dict[str, float]:
    return {
        "N_C": 0.5,
        "D_C": 0.02,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    }


def _predict_body(fit_id: str) -> bytes:
    points = [
        {"n0": 1.0e9, "rho": 0.25, "l0": 2.75, "tokens": 1.0e7 * (1 + i)}
        for i in range(POINTS_PER_REQUEST)
    ]
    return json.dumps({"fit_id": fit_id, "points": points}).encode()


def _client(spec: dict[str, Any], out: Any) -> None:
    """One closed-loop client: send, wait for the answer, repeat until the time is up."""
    base, method, path = spec["base"], spec["method"], spec["path"]
    body, duration = spec["body"], spec["duration"]
    headers = {"content-type": "application/json"}
    done = errors = 0
    with httpx.Client(base_url=base, timeout=30.0) as client:
        # One warm-up request outside the window (connection set-up, first-use caches).
        client.request(method, path, content=body, headers=headers)
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            response = client.request(method, path, content=body, headers=headers)
            if response.status_code == 200:
                done += 1
            else:
                errors += 1
    out.put((done, errors))


def _load(
    base: str, method: str, path: str, *, body: bytes | None, duration: float, clients: int
) -> dict[str, float]:
    """Requests per second of `clients` closed-loop clients over `duration` seconds."""
    context = mp.get_context("spawn")
    out: Any = context.Queue()
    spec = {"base": base, "method": method, "path": path, "body": body, "duration": duration}
    workers = [context.Process(target=_client, args=(spec, out)) for _ in range(clients)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return {"requests": done, "errors": errors, "rps": done / duration, "wall_s": elapsed}


def _total(parts: list[dict[str, float]], duration: float) -> dict[str, float]:
    done = sum(p["requests"] for p in parts)
    return {
        "requests": done,
        "errors": sum(p["errors"] for p in parts),
        "rps": done / duration,
    }


def main() -> None:
    """Run the benchmark and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per route")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per route")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="p2law-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        fit_id = _seed_database(url)
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "BROKER_DIR": str(Path(folder) / "broker"),
            "PYTHONPATH": str(ROOT),
        }
        env.pop("REDIS_URL", None)
        env.pop("API_KEY", None)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit("the server did not answer /health within 20 s")
            body = _predict_body(fit_id)
            check = httpx.post(
                f"{base}/predict", content=body, headers={"content-type": "application/json"}
            )
            check.raise_for_status()
            assert len(check.json()["loss"]) == POINTS_PER_REQUEST
            # The background load of a shared machine drifts: the routes take turns in short
            # rounds (order alternating) so both see the same conditions on average.
            load = {"duration": args.duration / args.rounds, "clients": args.clients}
            rounds: list[dict[str, dict[str, float]]] = []
            for index in range(args.rounds):
                order = ["health", "predict"] if index % 2 == 0 else ["predict", "health"]
                measured: dict[str, dict[str, float]] = {}
                for route in order:
                    if route == "health":
                        measured[route] = _load(base, "GET", "/health", body=None, **load)
                    else:
                        measured[route] = _load(base, "POST", "/predict", body=body, **load)
                rounds.append(measured)
            health = _total([r["health"] for r in rounds], args.duration)
            predict = _total([r["predict"] for r in rounds], args.duration)
        finally:
            server.terminate()
            server.wait(timeout=10)

    result = {
        "benchmark": "POST /predict (100 points, stored fit) vs GET /health, one uvicorn worker",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": args.duration,
        "rounds": args.rounds,
        "round_ratios": [
            r["predict"]["rps"] / r["health"]["rps"] if r["health"]["rps"] else None for r in rounds
        ],
        "clients": args.clients,
        "points_per_request": POINTS_PER_REQUEST,
        "health": health,
        "predict": predict,
        "ratio": predict["rps"] / health["rps"] if health["rps"] else None,
        "target_ratio": 0.5,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
