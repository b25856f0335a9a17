"""The Celery application of the workers, configured as docs/reliability.md requires.

Run it (one worker per GPU; ``make run`` starts one for both queues with beat embedded)::

    celery -A workers.celery_app worker -Q gpu,cpu -B --pool prefork --concurrency 1 \
        --without-gossip --without-mingle --without-heartbeat

Why each setting:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a killed child re-queues its message
  instead of acknowledging it; the re-delivery counts as an attempt when it claims the row,
  and ``attempts > max_attempts`` ends the loop (the application counts, Celery does not).
- ``worker_prefetch_multiplier=1``, concurrency 1, ``worker_max_tasks_per_child=1``: one job per
  GPU at a time, and a fresh child per job so its GPU memory is returned to the driver.
- ``worker_cancel_long_running_tasks_on_connection_loss``: a job whose message would be
  re-delivered after a broker reconnect is cancelled instead of running twice; its lease expires
  and the reaper sends it again (it resumes from its checkpoint).
- soft time limit below the hard one: the task gets a ``SoftTimeLimitExceeded`` to fail cleanly
  first; the three visibility timeouts are equal and above the hard limit, so Redis never
  re-delivers a message while its first copy is still running.
- no torch import here: CUDA must not be initialised in the parent before it forks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu.entity import Exchange, Queue

from app.core import queue as broker
from app.core.config import get_settings

settings = get_settings()
# Beat keeps its schedule file here whatever the broker (the embedded one keeps messages here too).
settings.broker_dir.mkdir(parents=True, exist_ok=True)

HARD_TIME_LIMIT_S = int(settings.job_time_limit_s)
#: Five minutes (or a tenth of short limits) to fail cleanly before the hard kill.
SOFT_TIME_LIMIT_S = max(1, HARD_TIME_LIMIT_S - min(300, max(1, HARD_TIME_LIMIT_S // 10)))
VISIBILITY_TIMEOUT_S = broker.visibility_timeout_s(settings)


def _queue(name: str) -> Queue:
    """A durable direct queue bound to its own exchange under the same name."""
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


app = Celery("p2law", broker=broker.broker_url(settings), include=["workers.tasks"])

_transport_options: dict[str, Any] = dict(broker.transport_options(settings))
_transport_options.pop("max_retries", None)  # the client's fail-fast; a worker keeps retrying

app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    worker_max_tasks_per_child=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    task_time_limit=HARD_TIME_LIMIT_S,
    task_soft_time_limit=SOFT_TIME_LIMIT_S,
    broker_transport_options={**_transport_options, "visibility_timeout": VISIBILITY_TIMEOUT_S},
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    visibility_timeout=VISIBILITY_TIMEOUT_S,
    broker_connection_retry_on_startup=True,
    task_default_queue=broker.CPU_QUEUE,
    task_queues=(
        _queue(broker.GPU_QUEUE),
        _queue(broker.CPU_QUEUE),
    ),
    task_routes={
        broker.RUN_JOB_TASK: {"queue": broker.GPU_QUEUE},
        "workers.tasks.reap_expired": {"queue": broker.CPU_QUEUE},
    },
    beat_schedule={
        "reap-expired-jobs": {
            "task": "workers.tasks.reap_expired",
            "schedule": timedelta(seconds=settings.reaper_interval_s),
            "options": {"queue": broker.CPU_QUEUE, "expires": settings.reaper_interval_s * 4},
        }
    },
    beat_schedule_filename=str(settings.broker_dir / "celerybeat-schedule"),
    worker_hijack_root_logger=False,
    # The embedded broker's fanout files would pile up for every worker that ever ran.
    worker_enable_remote_control=not broker.is_embedded(settings),
)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _reap_at_start(**_: Any) -> None:
    """Recover jobs orphaned while no worker ran (sent to the ``cpu`` queue, not run here)."""
    try:
        app.send_task("workers.tasks.reap_expired", queue=broker.CPU_QUEUE)
    except Exception:  # a broker hiccup at start; beat sends the next one
        return
