"""The API in its own process on a free port, as `make run` serves it, for tests that talk to
it over HTTP (the jobs CLI, the browser tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.core.config import PROJECT_ROOT


@dataclass
class Service:
    """``uvicorn app.main:create_app --factory`` in its own process group."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """TERM the process group, KILL it after 10 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(var: Path, database_url: str) -> dict[str, str]:
    """Settings for a service on `database_url` with its roots under `var`, which gets a tiny
    model folder (`tiny`) and a corpus (`corpus.txt`): enough for a job to be accepted and
    queued (no worker runs it). The embedded broker; no API key unless the caller adds one."""
    (var / "models" / "tiny").mkdir(parents=True)
    (var / "models" / "tiny" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (var / "data").mkdir()
    (var / "data" / "corpus.txt").write_text("some text\n")
    return {
        "DATABASE_URL": database_url,
        "MODEL_ROOT": str(var / "models"),
        "DATA_ROOT": str(var / "data"),
        "ARTIFACT_ROOT": str(var / "artifacts"),
        "BROKER_DIR": str(var / "broker"),
        "REDIS_URL": "",
        "API_KEY": "",
    }


def start_service(folder: Path, env: Mapping[str, str]) -> Service:
    """The API on a free port with ``env`` over this process's environment; returns once
    `/health` answers (its log is ``folder/service.log``)."""
    port = free_port()
    log = folder / "service.log"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    service = Service(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited early:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(service.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return service
        except OSError:
            time.sleep(0.2)
    service.stop()
    raise AssertionError(f"service not up in 60 s:\n{log.read_text(errors='replace')}")
