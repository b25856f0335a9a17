"""What the worker's Celery configuration does, shown without starting a worker.

Re-delivery of a killed child's job (late ack, reject on worker lost) and one job at a time in a
fresh child are shown with real workers in ``tests/workers/test_worker_e2e.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.core.config import PROJECT_ROOT


def _in_a_worker_process(code: str, tmp_path: Path, **env: str) -> list[str]:
    """Run ``code`` after importing the worker's Celery app, configured by ``env`` and an
    embedded broker under ``tmp_path``; its printed words."""
    environment = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "BROKER_DIR": str(tmp_path / "broker"),
        **env,
    }
    out = subprocess.run(
        [sys.executable, "-c", "from workers.celery_app import app, HARD_TIME_LIMIT_S\n" + code],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_jobs_are_routed_to_the_gpu_queue_and_the_reaper_to_the_cpu_queue(tmp_path: Path) -> None:
    # Sent by name without a queue, as the beat schedule and a plain send_task do: the routes
    # decide where each message lands.
    _in_a_worker_process(
        "app.send_task('workers.tasks.run_job', args=['job-1'])\n"
        "app.send_task('workers.tasks.reap_expired')\n",
        tmp_path,
    )
    messages = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "broker").rglob("*.msg"))
    assert messages == ["cpu.msg", "gpu.msg"]


def test_a_longer_job_time_limit_moves_the_soft_limit_and_every_visibility_timeout_above_it(
    tmp_path: Path,
) -> None:
    # Redis re-delivers an unacknowledged message after its visibility timeout: one shorter than
    # a job would run that job twice at once. The three timeouts follow the configured limit.
    words = _in_a_worker_process(
        "c = app.conf\n"
        "print(HARD_TIME_LIMIT_S, c.task_time_limit, c.task_soft_time_limit,"
        " c.broker_transport_options['visibility_timeout'],"
        " c.result_backend_transport_options['visibility_timeout'], c.visibility_timeout)\n",
        tmp_path,
        JOB_TIME_LIMIT_S="200000",
    )
    configured, hard, soft, *visibility = (int(w) for w in words)
    assert configured == hard == 200_000
    assert 0 < soft < hard
    assert len(set(visibility)) == 1 and visibility[0] > hard


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
