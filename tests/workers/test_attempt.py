"""``attempt_job`` in this process (no Celery): deterministic failures end the job with the
pipeline's message instead of looping through retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.db.session import session_scope
from app.repositories import jobs as jobs_repo
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.workers.conftest import job_row
from workers.attempt import attempt_job

pytestmark = pytest.mark.xdist_group("celery-workers")


def submit(**overrides: Any) -> str:
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "method": "depth",
        "rho": 0.25,
        "tokens": 1280,
        "dataset": {"path": "corpus.txt", "eval_tokens": 1024},
        "checkpoints": 3,
        "seq_len": 32,
        "batch_size": 4,
        "calib_samples": 4,
        "family": "tiny-llama",
    }
    body.update(overrides)
    with session_scope() as session:
        job, _ = service.submit(session, JobRequest.model_validate(body))
        return job.id


def test_two_four_above_the_reachable_rho_fails_with_the_maximum(
    job_roots: dict[str, Path],
) -> None:
    # The API refuses this target at submission (the reach is read from config.json); the worker
    # keeps its own check for architectures that reader does not know and for a model folder
    # replaced after submission, which this stands for.
    job_id = submit(method="2:4", rho=0.1)
    with session_scope() as session:
        row = jobs_repo.get(session, job_id)
        assert row is not None
        row.request = {**row.request, "rho": 0.45}
    assert attempt_job(job_id) == "failed"
    job = job_row(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error is not None and "2:4" in job.error and "at most rho=" in job.error
    assert job.finished_at is not None and job.lease_owner is None


def test_a_dataset_removed_after_submission_fails_the_job(job_roots: dict[str, Path]) -> None:
    job_id = submit()
    job_roots["corpus"].unlink()
    assert attempt_job(job_id) == "failed"
    job = job_row(job_id)
    assert job.status == "failed" and "does not exist" in (job.error or "")


def test_a_job_already_claimed_or_finished_is_not_run_again(job_roots: dict[str, Path]) -> None:
    job_id = submit()
    with session_scope() as session:
        service.cancel(session, job_id)
    assert attempt_job(job_id) == "not claimed"
    assert job_row(job_id).attempts == 0


#: A request as an earlier version stored it: before grad_accum, schedule, warmup_frac,
#: weight_decay, calib_samples, device, dtype, idempotency_key and dataset.text_field existed.
EARLIER_REQUEST: dict[str, Any] = {
    "model": "tiny-llama",
    "method": "depth",
    "rho": 0.25,
    "tokens": 1280,
    "dataset": {"path": "corpus.txt", "eval_tokens": 1024},
    "checkpoints": 3,
    "seq_len": 32,
    "batch_size": 4,
    "lr": 3e-4,
    "seed": 0,
    "family": "tiny-llama",
    "refit": False,
    "stop_rule": None,
}


def test_a_request_stored_by_an_earlier_version_runs_with_todays_defaults(
    job_roots: dict[str, Path],
) -> None:
    job_id = submit()
    with session_scope() as session:
        row = jobs_repo.get(session, job_id)
        assert row is not None
        row.request = dict(EARLIER_REQUEST)
    assert attempt_job(job_id) == "succeeded"
    job = job_row(job_id)
    assert job.status == "succeeded" and job.error is None
    assert job.measured is not None and job.measured["schedule"].startswith("wsd")
    with session_scope() as session:
        assert observations_repo.count_by_run(session, job_id) == 3
