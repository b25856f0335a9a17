"""The worker's Celery settings are the ones reliability.md requires (no worker started)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from app.core.config import PROJECT_ROOT


@pytest.fixture
def conf() -> Any:
    from workers.celery_app import app

    return app.conf


def test_late_ack_and_reject_on_worker_lost(conf: Any) -> None:
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True


def test_one_job_at_a_time_in_a_fresh_child(conf: Any) -> None:
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_concurrency == 1
    assert conf.worker_max_tasks_per_child == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True


def test_time_limits_and_visibility_timeouts(conf: Any) -> None:
    soft, hard = conf.task_soft_time_limit, conf.task_time_limit
    assert 0 < soft < hard
    timeouts = {
        conf.broker_transport_options["visibility_timeout"],
        conf.result_backend_transport_options["visibility_timeout"],
        conf.visibility_timeout,
    }
    assert len(timeouts) == 1 and timeouts.pop() > hard


def test_jobs_go_to_gpu_and_the_reaper_to_cpu_on_a_beat(conf: Any) -> None:
    assert {q.name for q in conf.task_queues} == {"gpu", "cpu"}
    routes = conf.task_routes
    assert routes["workers.tasks.run_job"]["queue"] == "gpu"
    assert routes["workers.tasks.reap_expired"]["queue"] == "cpu"
    schedule = conf.beat_schedule["reap-expired-jobs"]
    assert schedule["task"] == "workers.tasks.reap_expired"


def test_the_worker_parent_never_imports_torch() -> None:
    code = (
        "import sys, workers.celery_app, workers.tasks; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_the_api_never_imports_workers() -> None:
    code = "import sys, app.main; print(any(m.startswith('workers') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
