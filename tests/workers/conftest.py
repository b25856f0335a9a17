"""Fixtures for tests that run real Celery worker processes on a tiny model.

- ``tiny_assets`` (session): a 4-layer Llama (~0.2M parameters) built from a config with its own
  byte-level BPE tokenizer trained on a small generated corpus, briefly pretrained and saved in
  HF format once per run.
- ``job_roots``: copies of the model and the corpus inside this test's MODEL_ROOT / DATA_ROOT,
  on a migrated SQLite file that the test and the worker processes share.
- ``redis_url``: a dedicated database of the local Redis, flushed before and after (skips with
  the reason when Redis is not reachable); a module may name its own (``REDIS_DB``).
- ``worker_factory``: starts ``celery -A workers.celery_app worker`` subprocesses (prefork,
  concurrency 1, beat embedded) in their own process group, so a test can ``kill -9`` the
  child running a job or the whole worker; every worker is killed at the end of the test.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.core import queue
from app.core.config import PROJECT_ROOT, get_settings
from app.db.session import session_scope
from app.repositories import jobs as jobs_repo

#: A Redis database number no other part of the project uses.
REDIS_TEST_DB = 13
REDIS_BASE = "redis://127.0.0.1:6379"
CELERY = Path(sys.executable).parent / "celery"

WORDS = [
    "the",
    "model",
    "prunes",
    "layers",
    "and",
    "trains",
    "again",
    "on",
    "tokens",
    "while",
    "the",
    "loss",
    "falls",
    "slowly",
    "toward",
    "its",
    "floor",
    "as",
    "data",
    "grows",
    "and",
    "each",
    "checkpoint",
    "records",
    "a",
    "point",
    "for",
    "the",
    "law",
    "to",
    "fit",
]


def make_corpus(n_words: int = 60_000, seed: int = 0) -> str:
    """Pseudo-text with some structure (a word chain), so a tiny model can learn a little."""
    rng = random.Random(seed)
    out: list[str] = []
    index = 0
    for _ in range(n_words):
        index = (index + rng.choice((1, 1, 2, 3))) % len(WORDS)
        out.append(WORDS[index])
        if rng.random() < 0.08:
            out.append(".\n")
    return " ".join(out)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pretrained Llama with its own tokenizer, and the corpus it was trained on.

    Pretrained briefly with a decaying learning rate (make-model's recipe, ~50k tokens, seconds)
    so that L0 is a floor: post-training a pruned copy at a low constant rate stays above it,
    the observations are not excluded and the law can be refitted (docs/law.md §3).
    """
    import torch

    from workers.ml.make_model import Shape, make_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-assets")
    (root / "corpus.txt").write_text(make_corpus())
    make_model(
        root / "tiny-llama",
        arch="llama",
        size=None,
        shape=Shape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128),
        corpus=root / "corpus.txt",
        tokens=50_000,
        vocab=320,
        seq_len=32,
        batch_size=8,
        lr=3e-3,
        eval_tokens=1024,
        progress=False,
    )
    return {"model": root / "tiny-llama", "corpus": root / "corpus.txt"}


@pytest.fixture
def job_roots(sqlite_url: str, tiny_assets: dict[str, Path]) -> dict[str, Path]:
    """The tiny model and corpus inside this test's roots (the API and workers see them)."""
    settings = get_settings()
    model_root, data_root = Path(settings.model_root), Path(settings.data_root)
    model_root.mkdir(parents=True, exist_ok=True)
    data_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_assets["model"], model_root / "tiny-llama")
    shutil.copy(tiny_assets["corpus"], data_root / "corpus.txt")
    return {"model": model_root / "tiny-llama", "corpus": data_root / "corpus.txt"}


def redis_reachable(url: str) -> str | None:
    """None when Redis answers at ``url``, else the reason."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis unreachable at {url}: {exc}"
    return None


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A flushed, dedicated database of the local Redis, set as REDIS_URL for the test.

    The database is ``REDIS_TEST_DB`` unless the test module sets its own ``REDIS_DB``: tests
    that share a database flush each other's queues, so they must share an xdist group too; a
    module with its own database can run beside them in another group.
    """
    import redis

    url = f"{REDIS_BASE}/{getattr(request.module, 'REDIS_DB', REDIS_TEST_DB)}"
    reason = redis_reachable(url)
    if reason is not None:
        pytest.skip(reason)
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    queue.reset_client()
    yield url
    client.flushdb()
    queue.reset_client()


#: Settings every worker test uses: a short lease and a fast reaper, so recovery takes seconds.
FAST_RECOVERY = {
    "JOB_LEASE_S": "2",
    "REAPER_INTERVAL_S": "1",
    "JOB_MAX_ATTEMPTS": "6",
    "JOB_TIME_LIMIT_S": "900",
}


@dataclass
class Worker:
    """One ``celery worker`` process group started by a test."""

    process: subprocess.Popen[bytes]
    log: Path
    name: str

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.output():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.output()[-4000:]}")

    def kill_all(self) -> None:
        """``kill -9`` of the whole worker: parent, pool children and embedded beat."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class WorkerFactory:
    """Starts workers with the test's environment; kills whatever is left at teardown."""

    folder: Path
    workers: list[Worker] = field(default_factory=list)

    def start(
        self, extra_env: dict[str, str] | None = None, wait: bool = True, pool: str = "prefork"
    ) -> Worker:
        """A worker on both queues with beat; ``pool="solo"`` runs jobs in the worker process
        itself (torch is imported once for all its jobs: faster tests, no child to kill)."""
        name = f"w{len(self.workers)}"
        log = self.folder / f"{name}.log"
        env = {
            **os.environ,
            **FAST_RECOVERY,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
            **(extra_env or {}),
        }
        command = [
            str(CELERY),
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            "gpu,cpu",
            "-B",
            "--pool",
            pool,
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{name}-{os.getpid()}@%h",
            "--loglevel",
            "INFO",
            "--logfile",
            str(log),
        ]
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / f"{name}.err", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        worker = Worker(process, log, name)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill_all()


@pytest.fixture
def worker_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerFactory]:
    """Worker processes for this test (the test process gets the same fast-recovery settings)."""
    for key, value in FAST_RECOVERY.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    folder = tmp_path / "workers"
    folder.mkdir()
    factory = WorkerFactory(folder)
    yield factory
    factory.close()


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = str
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` and logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()[-6000:]}")


def job_row(job_id: str) -> Any:
    """The job's row, freshly read (None if missing)."""
    with session_scope() as session:
        return jobs_repo.get(session, job_id)
