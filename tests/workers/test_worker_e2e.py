"""Real worker processes run real jobs: end to end, kill -9 and resume, cancel, broker outage,
law-guided stop, and the embedded broker that `make run` uses.

Each test starts ``celery worker`` subprocesses (prefork, one child per job) on a tiny Llama;
jobs are submitted through the service layer the API calls (HTTP is covered in tests/api).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.core import queue
from app.core.config import get_settings
from app.db.models.fit import Fit
from app.db.session import session_scope
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.workers.conftest import WorkerFactory, job_row, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("celery-workers")]

#: 128 tokens per optimizer step (4 sequences of 32 tokens).
STEP_TOKENS = 4 * 32


def request(**overrides: Any) -> JobRequest:
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "method": "depth",
        "rho": 0.25,
        "tokens": STEP_TOKENS * 60,
        "dataset": {"path": "corpus.txt", "eval_tokens": 1024},
        "checkpoints": 8,
        "seq_len": 32,
        "batch_size": 4,
        "calib_samples": 8,
        "lr": 3e-4,
        "family": "tiny-llama",
    }
    body.update(overrides)
    return JobRequest.model_validate(body)


def submit(job: JobRequest) -> str:
    with session_scope() as session:
        created, _ = service.submit(session, job)
        return created.id


def points(job_id: str) -> list[Any]:
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id, limit=1000)
        return rows


def final(job_id: str, factory: WorkerFactory, timeout: float = 150.0) -> Any:
    def done() -> Any:
        job = job_row(job_id)
        return (
            job if job is not None and job.status in ("succeeded", "failed", "cancelled") else None
        )

    return wait_for(done, timeout, f"job {job_id} to finish", lambda: _logs(factory))


def _logs(factory: WorkerFactory) -> str:
    return "\n".join(f"--- {w.name}\n{w.output()[-3000:]}" for w in factory.workers)


def test_worker_runs_a_job_end_to_end_on_redis(
    redis_url: str, job_roots: dict[str, Path], worker_factory: WorkerFactory
) -> None:
    worker_factory.start()
    job_id = submit(request(refit=True))
    job = final(job_id, worker_factory)
    assert job.status == "succeeded", (job.error, _logs(worker_factory))
    assert job.attempts == 1 and job.resumed_from_tokens is None
    assert job.tokens_done == job.tokens_total > 0
    assert job.measured is not None and 0 < job.measured["rho"] < 1
    rows = points(job_id)
    tokens = [r.tokens for r in rows]
    assert len(rows) == 8 and tokens == sorted(set(tokens)) and tokens[-1] == job.tokens_done
    assert {(r.source, r.family, r.method) for r in rows} == {("job", "tiny-llama", "depth")}
    assert all(r.rho == job.measured["rho"] and r.l0 == job.measured["l0"] for r in rows)
    assert any("is now the default fit" in w for w in job.warnings), job.warnings
    with session_scope() as session:
        fit = session.query(Fit).filter_by(family="tiny-llama", method="depth").one()
        assert fit.is_default and fit.n_observations + sum(r.excluded for r in rows) == 8
    # The artifact is an ordinary HF model directory that reloads.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job.artifact)
    assert model.config.num_hidden_layers == 3
    # The resumable training state goes once the job is final (the task removes it right after).
    workdir = Path(get_settings().artifact_root, "_work", job_id)
    wait_for(lambda: not workdir.exists(), 30, "the job's training state to be removed")


def expected_checkpoint_tokens(job: JobRequest) -> list[int]:
    """The tokens at which the pipeline evaluates this request (its log-spaced steps)."""
    from workers.ml.job import checkpoint_steps

    total_steps = max(1, round(job.tokens / STEP_TOKENS))
    return [step * STEP_TOKENS for step in checkpoint_steps(total_steps, job.checkpoints)]


def lease_pid(job_id: str) -> int:
    """The pid of the pool child holding the job (the lease owner is ``host:pid:suffix``)."""
    job = job_row(job_id)
    assert job is not None and job.lease_owner is not None
    return int(job.lease_owner.split(":")[1])


def test_kill_child_then_whole_worker_then_restart_resumes_from_checkpoints(
    redis_url: str, job_roots: dict[str, Path], worker_factory: WorkerFactory
) -> None:
    job = request(tokens=STEP_TOKENS * 400, checkpoints=8)
    expected = expected_checkpoint_tokens(job)
    first = worker_factory.start()
    job_id = submit(job)
    logs = lambda: _logs(worker_factory)  # noqa: E731

    # 1. kill -9 of the pool child after two checkpoints were recorded.
    wait_for(lambda: len(points(job_id)) >= 2, 120, "two checkpoints", logs)
    os.kill(lease_pid(job_id), signal.SIGKILL)

    # The message is re-queued, the lease expires, the reaper re-sends, attempt 2 resumes.
    def resumed_and_progressing() -> bool:
        row = job_row(job_id)
        return bool(row.attempts >= 2 and row.resumed_from_tokens and len(points(job_id)) >= 4)

    wait_for(resumed_and_progressing, 120, "attempt 2 to resume and record more points", logs)
    resumed_once = job_row(job_id).resumed_from_tokens
    assert resumed_once in expected

    # 2. kill -9 of the whole worker (parent, child, beat), then a fresh worker.
    first.kill_all()
    worker_factory.start()
    done = final(job_id, worker_factory, timeout=180)
    assert done.status == "succeeded", (done.error, logs())
    assert done.attempts >= 3
    assert done.resumed_from_tokens is not None and done.resumed_from_tokens > 0
    rows = points(job_id)
    assert [int(r.tokens) for r in rows] == expected  # exactly one point per checkpoint
    assert all(r.loss > 0 for r in rows)


def test_cancel_a_queued_job_and_a_running_one(
    redis_url: str, job_roots: dict[str, Path], worker_factory: WorkerFactory
) -> None:
    queued_id = submit(request())
    with session_scope() as session:
        assert service.cancel(session, queued_id).status == "cancelled"
    running_id = submit(request(tokens=STEP_TOKENS * 400, checkpoints=8))
    worker_factory.start()
    logs = lambda: _logs(worker_factory)  # noqa: E731

    wait_for(lambda: len(points(running_id)) >= 2, 120, "the running job's checkpoints", logs)
    with session_scope() as session:
        assert service.cancel(session, running_id).status == "cancelling"
    at_cancel = len(points(running_id))
    done = final(running_id, worker_factory)
    assert done.status == "cancelled" and done.artifact is None
    stopped_with = len(points(running_id))
    # It stops at the next checkpoint: at most that checkpoint's point is added.
    assert at_cancel <= stopped_with <= at_cancel + 1
    assert stopped_with < len(expected_checkpoint_tokens(request(tokens=STEP_TOKENS * 400)))

    never = job_row(queued_id)
    assert never.status == "cancelled" and never.attempts == 0 and never.started_at is None
    assert points(queued_id) == []
    assert len(points(running_id)) == stopped_with  # nothing recorded after the end


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server this test owns, on its own port, without persistence."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _answers(self.port), 10, f"redis on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_broker_down_during_submission_then_back_runs_the_job(
    job_roots: dict[str, Path],
    worker_factory: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    server = PrivateRedis(_free_port())
    url = f"redis://127.0.0.1:{server.port}/0"
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    queue.reset_client()
    server.start()
    try:
        # The solo pool imports torch once for both jobs (the prefork pool is tested above).
        worker_factory.start(pool="solo")
        server.stop()
        body = request().model_dump(mode="json", exclude_none=True)
        with TestClient(create_app()) as client:
            accepted = [client.post("/jobs/prune-finetune", json=body) for _ in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        ids = [r.json()["id"] for r in accepted]
        assert all(job_row(i).enqueued_at is None for i in ids)  # kept for the reaper
        server.start()
        for job_id in ids:
            done = final(job_id, worker_factory, timeout=180)
            assert done.status == "succeeded", (done.error, _logs(worker_factory))
            assert len(points(job_id)) == 8
    finally:
        worker_factory.close()
        server.stop()
        queue.reset_client()


def test_embedded_broker_worker_runs_a_job_that_stops_early_by_the_law(
    job_roots: dict[str, Path], worker_factory: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    queue.reset_client()
    worker_factory.start(extra_env={"REDIS_URL": ""})
    # A threshold no curve can beat: the rule stops as soon as it may (4 checkpoints).
    stop_rule = {"kind": "marginal", "threshold": 1e9, "min_checkpoints": 4}
    job_id = submit(request(stop_rule=stop_rule))
    done = final(job_id, worker_factory)
    assert done.status == "succeeded", (done.error, _logs(worker_factory))
    assert done.stopped_early and "law-guided stop" in (done.stop_reason or "")
    assert "below the threshold" in (done.stop_reason or "")
    rows = points(job_id)
    assert len(rows) == 4 and done.stopped_at_tokens == int(rows[-1].tokens)
    assert Path(done.artifact, "config.json").is_file()
