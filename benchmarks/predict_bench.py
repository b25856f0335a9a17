"""Throughput of `POST /predict` (100 points per request) against a bare endpoint that only
parses the same body, side by side in one uvicorn worker.

Issue 8's speed targets: a family's stored default fit with an 80% interval answers at least
0.5x the request rate of the bare endpoint, and an inline law at least 0.8x.

The script migrates a temporary SQLite database, stores synthetic observations (clearly
synthetic: app.law.synthetic) and a P² fit with BOOTSTRAP refits (and so its calibration) as
the family's default, then starts one uvicorn worker on a free 127.0.0.1 port serving the
service's app with two extra routes that only this benchmark adds (`bench_app`): async
endpoints that parse the request body as `PredictRequest` and answer a constant.
`POST /bench/parse` takes the model as a FastAPI body parameter (the baseline of the targets);
`POST /bench/parse-json` parses the bytes with pydantic-core in one pass, as /predict does.

Every route then takes turns under the same closed-loop load: CLIENTS separate processes (so
the load generator is not one GIL), each with one keep-alive connection (the standard
library's http.client, the cheapest client at hand, since the clients share the machine's cores
with the server), in ROUNDS rounds whose route order rotates, DURATION seconds per route in
all. The 100 points are one new model (N0, rho and L0 inside the fitted ranges but no fitted
run) at 100 token counts.

Reported per route: requests per second (of the totals, and the median of the rounds' ratios),
the server process's CPU time per request (from /proc, so without the clients' share), and
ratios to both bare endpoints. The two goals (GOALS: a stored fit with an 80% interval ≥ 0.5x
`bare_parse`, an inline law ≥ 0.8x) are reported last, each as the ratio of the totals, the
median of the rounds' paired ratios with their quartiles (a route and the bare endpoint take
turns within a round, so load that comes and goes weighs on both), the ratio of server CPU per
request, and the margin of the median over the goal. A benchmark measures: nothing here fails
on a time. Results go to benchmarks/results/predict_bench.json.

    .venv/bin/python benchmarks/predict_bench.py [--duration 24] [--rounds 24] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import Body, FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402

from app.schemas.common import EXAMPLE_LAW  # noqa: E402
from app.schemas.predict import PredictRequest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "predict_bench.json"
POINTS_PER_REQUEST = 100
BOOTSTRAP = 100
LEVEL = 0.8
BARE_PATH = "/bench/parse"
BARE_JSON_PATH = "/bench/parse-json"
#: The throughput goals (issue 16), as a share of `bare_parse`'s request rate.
GOALS = {"stored_default_interval": 0.5, "inline_law": 0.8}


def bench_app() -> FastAPI:
    """The service's application plus the two bare routes (for uvicorn ``--factory``)."""
    from app.main import create_app

    app = create_app()

    @app.post(BARE_PATH)
    async def parse(body: PredictRequest = Body(...)) -> Response:
        """Parse the body as a FastAPI body parameter, answer a constant."""
        return Response(b'{"ok":true}', media_type="application/json")

    @app.post(BARE_JSON_PATH)
    async def parse_json(request: Request) -> Response:
        """Parse the body's bytes in one pass as /predict does, answer a constant."""
        PredictRequest.model_validate_json(await request.body())
        return Response(b'{"ok":true}', media_type="application/json")

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _p2_params() -> dict[str, float]:
    """The documented example law's constants (the API's worked examples use them too)."""
    return dict(EXAMPLE_LAW["params"])


def _seed_database(url: str, bootstrap: int) -> dict[str, Any]:
    """Migrate, store synthetic observations and the family's default fit; describe the fit."""
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
        fit = create_fit(
            session,
            family=rows[0]["family"],
            method="depth",
            bootstrap=bootstrap,
            make_default=True,
        )
        return {
            "id": fit.id,
            "family": fit.family,
            "method": fit.method,
            "observations": len(rows),
            "refits": len(fit.bootstrap or []),
            "calibrated": fit.calibration is not None,
        }


def _bodies(fit: dict[str, Any]) -> dict[str, tuple[str, str, bytes | None]]:
    """Each measured route: (HTTP method, path, body)."""
    # A new run inside the fitted ranges (sizes 0.5e9-8e9, rho 0.15-0.35, 1e7-5e9 tokens):
    # the usual question, and no point continues a fitted run.
    points = [
        {"n0": 2.0e9, "rho": 0.3, "l0": 2.6, "tokens": 1.0e7 * (1 + i)}
        for i in range(POINTS_PER_REQUEST)
    ]
    default = {"family": fit["family"], "method": fit["method"], "points": points}
    with_interval = {**default, "interval": LEVEL}

    def post(path: str, body: dict[str, Any]) -> tuple[str, str, bytes]:
        return ("POST", path, json.dumps(body).encode())

    return {
        # The bare endpoints parse the body of the stored-fit request with an interval.
        "bare_parse": post(BARE_PATH, with_interval),
        "bare_parse_json": post(BARE_JSON_PATH, with_interval),
        "inline_law": post(
            "/predict", {"law": {"form": "p2", "params": _p2_params()}, "points": points}
        ),
        "stored_default": post("/predict", default),
        "stored_default_interval": post("/predict", with_interval),
        "stored_default_confidence": post(
            "/predict", {**with_interval, "interval_kind": "confidence"}
        ),
        "health": ("GET", "/health", None),
    }


def _client(port: int, orders: Any, out: Any) -> None:
    """One closed-loop client process, kept for the whole run. For each route it is given, it
    connects (one warm-up request outside the window), says it is ready, waits for the start,
    then sends, reads the whole answer and repeats until the time is up."""
    while (order := orders.get()) is not None:
        method, path, body, duration = order
        headers = {"content-type": "application/json"} if body is not None else {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _send(conn, method, path, body, headers)
        out.put("ready")
        orders.get()  # the start
        done = errors = 0
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            if _send(conn, method, path, body, headers) == 200:
                done += 1
            else:
                errors += 1
        conn.close()
        out.put((done, errors))


def _send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> int:
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def _server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Clients:
    """CLIENTS client processes started once, so that a route's turn costs no process start
    and the turns can be short (the finer the interleaving, the less drift between routes)."""

    def __init__(self, port: int, clients: int) -> None:
        context = mp.get_context("spawn")
        self._out: Any = context.Queue()
        self._orders: list[Any] = [context.Queue() for _ in range(clients)]
        self._workers = [
            context.Process(target=_client, args=(port, orders, self._out))
            for orders in self._orders
        ]
        for worker in self._workers:
            worker.start()

    def load(
        self, pid: int, route: tuple[str, str, bytes | None], duration: float
    ) -> dict[str, float]:
        """Requests per second over `duration` seconds, all clients on `route` together, and
        the server's CPU seconds in that window."""
        method, path, body = route
        for orders in self._orders:
            orders.put((method, path, body, duration))
        for _ in self._orders:
            if self._out.get(timeout=60) != "ready":
                raise RuntimeError("a client failed before the measurement")
        cpu0 = _server_cpu_s(pid)
        for orders in self._orders:
            orders.put("go")
        results = [self._out.get(timeout=60 + duration) for _ in self._orders]
        cpu1 = _server_cpu_s(pid)
        done = sum(r[0] for r in results)
        return {
            "requests": done,
            "errors": sum(r[1] for r in results),
            "rps": done / duration,
            "server_cpu_s": cpu1 - cpu0,
        }

    def close(self) -> None:
        for orders in self._orders:
            orders.put(None)
        for worker in self._workers:
            worker.join(timeout=30)


def _summary(parts: list[dict[str, float]], duration: float) -> dict[str, Any]:
    done = sum(p["requests"] for p in parts)
    cpu = sum(p["server_cpu_s"] for p in parts)
    return {
        "requests": done,
        "errors": sum(p["errors"] for p in parts),
        "rps": done / duration,
        "server_cpu_ms_per_request": 1e3 * cpu / done if done else float("nan"),
        "rounds_rps": [p["rps"] for p in parts],
    }


def _ratios(summary: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, float]]:
    """Each route against `base`: requests per second (of the totals, and the median of the
    rounds' ratios) and server CPU time per request."""
    bare = summary[base]
    out: dict[str, dict[str, float]] = {}
    for name, s in summary.items():
        per_round = [r / b for r, b in zip(s["rounds_rps"], bare["rounds_rps"], strict=True) if b]
        out[name] = {
            "rps": s["rps"] / bare["rps"],
            "rps_median_of_rounds": statistics.median(per_round),
            "server_cpu": bare["server_cpu_ms_per_request"] / s["server_cpu_ms_per_request"],
        }
    return out


def _goals(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each goal's route against `bare_parse`: the ratio of the totals, the median and
    quartiles of the rounds' paired ratios, the server-CPU ratio and the median's margin."""
    bare = summary["bare_parse"]
    out: dict[str, dict[str, float]] = {}
    for name, goal in GOALS.items():
        if name not in summary:
            continue
        s = summary[name]
        paired = [r / b for r, b in zip(s["rounds_rps"], bare["rounds_rps"], strict=True) if b]
        q1, median, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        out[name] = {
            "goal": goal,
            "ratio_of_totals": s["rps"] / bare["rps"],
            "median_of_rounds": median,
            "rounds_q1": q1,
            "rounds_q3": q3,
            "rounds_at_or_above_goal": sum(r >= goal for r in paired) / len(paired),
            "server_cpu_ratio": bare["server_cpu_ms_per_request"] / s["server_cpu_ms_per_request"],
            "margin": median / goal - 1,
        }
    return out


def _goal_lines(goals: dict[str, dict[str, float]]) -> str:
    lines = ["", "goals against bare_parse (paired per round):"]
    for name, g in goals.items():
        lines.append(
            f"  {name:26s} totals {g['ratio_of_totals']:.2f}  median {g['median_of_rounds']:.2f} "
            f"[q1 {g['rounds_q1']:.2f}, q3 {g['rounds_q3']:.2f}]  cpu {g['server_cpu_ratio']:.2f}"
            f"  goal >= {g['goal']:.1f}  margin {100 * g['margin']:+.0f}%"
            f"  rounds at/above {100 * g['rounds_at_or_above_goal']:.0f}%"
        )
    return "\n".join(lines)


def _table(summary: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> str:
    lines = [
        f"{'route':28s} {'req/s':>7s} {'cpu ms/req':>10s} "
        f"{'x bare':>7s} {'(rounds)':>8s} {'x bare cpu':>10s} {'x json':>7s}"
    ]
    for name, s in summary.items():
        main, json_ = ratios["bare_parse"][name], ratios["bare_parse_json"][name]
        lines.append(
            f"{name:28s} {s['rps']:7.0f} {s['server_cpu_ms_per_request']:10.3f} "
            f"{main['rps']:7.2f} {main['rps_median_of_rounds']:8.2f} "
            f"{main['server_cpu']:10.2f} {json_['rps']:7.2f}"
        )
    return "\n".join(lines)


def _check(port: int, routes: dict[str, tuple[str, str, bytes | None]]) -> dict[str, Any]:
    """One request per route: every answer is a 200 and the /predict ones hold every point."""
    seen: dict[str, Any] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for name, (method, path, body) in routes.items():
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"{name}: {response.status} {data[:300]!r}")
        if path == "/predict":
            answer = json.loads(data)
            assert len(answer["loss"]) == POINTS_PER_REQUEST, name
            has_interval = answer["lower"] is not None
            assert has_interval == name.endswith(("interval", "confidence")), (name, answer)
            seen[name] = {"warnings": answer["warnings"], "interval": has_interval}
    conn.close()
    return seen


def main() -> None:
    """Run the benchmark and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=24.0, help="seconds per route")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--rounds", type=int, default=24, help="rounds (route order rotates)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="refits of the fit")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    parser.add_argument(
        "--routes", nargs="+", help="measure only these routes (and the two bare ones)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="p2law-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        fit = _seed_database(url, args.bootstrap)
        routes = _bodies(fit)
        if args.routes:
            routes = {k: v for k, v in routes.items() if k.startswith("bare_") or k in args.routes}
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
                "benchmarks.predict_bench:bench_app",
                "--factory",
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
        load_before = os.getloadavg()
        try:
            for _ in range(300):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit("the server did not answer /health within 30 s")
            checked = _check(port, routes)
            # The background load of a shared machine drifts: routes take turns in short
            # rounds, each round starting one route later, so all see the same conditions.
            names = list(routes)
            per_round = args.duration / args.rounds
            measured: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            clients = _Clients(port, args.clients)
            try:
                for index in range(args.rounds):
                    shift = index % len(names)
                    for name in names[shift:] + names[:shift]:
                        measured[name].append(clients.load(server.pid, routes[name], per_round))
            finally:
                clients.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
        load_after = os.getloadavg()

    summary = {name: _summary(parts, args.duration) for name, parts in measured.items()}
    ratios = {base: _ratios(summary, base) for base in ("bare_parse", "bare_parse_json")}
    goals = _goals(summary)
    result = {
        "benchmark": (
            "POST /predict (100 points) against a bare endpoint parsing the same body, "
            "one uvicorn worker, side by side"
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "command": "benchmarks/predict_bench.py " + " ".join(sys.argv[1:]),
        "duration_s_per_route": args.duration,
        "rounds": args.rounds,
        "clients": args.clients,
        "points_per_request": POINTS_PER_REQUEST,
        "interval_level": LEVEL,
        "fit": fit,
        "answers": checked,
        "routes": summary,
        "ratio_to": ratios,
        "targets": {
            "baseline": "bare_parse",
            "stored_default_interval": 0.5,
            "stored_default_confidence": 0.5,
            "inline_law": 0.8,
        },
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(summary, ratios))
    print(_goal_lines(goals))


if __name__ == "__main__":
    main()
