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
    assert not Path(get_settings().artifact_root, "_work", job_id).exists()
