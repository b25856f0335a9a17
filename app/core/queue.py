"""Send jobs to the workers by name, and say whether the broker is up. Never imports ``workers``.

The API only *sends* tasks: it builds a Celery client from the settings and calls
``send_task("workers.tasks.run_job", args=[job_id], queue="gpu")``; the message carries the job
id and nothing else, because the database row is the source of truth (docs/reliability.md). A send
that fails leaves ``jobs.enqueued_at`` null and the reaper sends it again, so a failed send loses
nothing; it must only fail *fast* (a short connect timeout, one quick retry) so the API answers
in a second or two instead of hanging on a dead broker.

Broker choice
-------------
``REDIS_URL`` set: that Redis (production; run it with ``appendonly yes`` and
``maxmemory-policy noeviction``). Unset: the **embedded broker**, a folder of message files under
``BROKER_DIR`` (default ``var/broker``), so ``make run`` needs no server. Why files, and not the
other serverless candidate:

- kombu's ``filesystem://`` transport keeps each message in its own file; producers and consumers
  in different processes share the folder; fanout (Celery's remote control) is supported. One
  flaw matters here: it writes a message in place, so a consumer polling the folder can move and
  read a file that is still being written. The transport below (``p2fs://``) writes into a hidden
  temporary file, fsyncs it and renames it into place, so a reader sees whole messages only.
  A second flaw: the reader takes files in sorted *text* order, and kombu names them by an
  unpadded millisecond count of ``monotonic()``, so "999_..." sorts after "1000_..." and the
  count restarts at boot. ``p2fs://`` names a message
  ``<wall-clock ns, 20 digits>_<process send counter, 20 digits>_<uuid>.<queue>.msg``, so text
  order is send order.
- kombu's ``sqla+sqlite://`` transport was rejected: it has no fanout exchange, marks a fetched
  message invisible for good (a killed worker loses it just the same) and would add a second
  SQLite writer with its own, non-``BEGIN IMMEDIATE`` transactions beside the service's database.

Limits of the embedded broker (documented, and covered by the database design):
- it polls the folder (``polling_interval`` 0.5 s), so a job starts up to half a second late;
- a delivered but unacknowledged message lives only in the worker's memory (the file is moved
  out of the folder on delivery). A worker *child* killed mid-task is fine (Celery rejects and
  re-queues the message: ``task_reject_on_worker_lost``), and a warm shutdown puts unacked
  messages back; but ``kill -9`` of the whole worker loses the message. The job's row still says
  ``running`` with a lease that expires, and the reaper sends it again;
- one machine only (a local folder); ``REDIS_URL`` is the way to run workers elsewhere;
- delivered files are moved to ``processed/`` (an atomic rename) and deleted after an hour by
  the reaper task.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path
from time import time_ns
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem as kombu_filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from app.core import atomic
from app.core.config import Settings, get_settings

#: The task the API sends; defined in ``workers/tasks.py`` (sent by name, never imported here).
RUN_JOB_TASK = "workers.tasks.run_job"
#: Queue of training jobs (GPU workers) and of light work (fits, the reaper).
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
#: URL scheme of the embedded broker (registered with kombu below).
EMBEDDED_SCHEME = "p2fs"
#: How long a send may take before the API gives up and leaves the job to the reaper.
CONNECT_TIMEOUT_S = 2.0
SEND_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


#: Sends made by this process so far; orders its messages that share one clock reading.
_sends = itertools.count()


def _message_name(queue: str) -> str:
    """The file name of the next message of ``queue``: text order is send order."""
    # kombu's reader takes files in sorted text order: fixed-width numbers keep it numeric
    # across a digit boundary, wall-clock time (not monotonic(), which restarts at boot) keeps
    # it across reboots, and the counter keeps it within one tick of a coarse clock.
    return f"{time_ns():020d}_{next(_sends):020d}_{uuid.uuid4()}.{queue}.msg"


class AtomicFilesystemChannel(kombu_filesystem.Channel):
    """kombu's filesystem channel with whole-file writes (write, fsync, rename) and file names
    that sort in send order."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``payload`` as one message file of ``queue``; readers never see half of it."""
        folder = self.data_folder_out
        # Written under a dot-name that does not end in ".msg": readers never list it.
        try:
            atomic.write_bytes(
                Path(folder) / _message_name(queue),
                str_to_bytes(dumps(payload)),  # type: ignore[no-untyped-call]
            )
        except OSError as exc:
            raise ChannelError(f"cannot write a message to {folder}") from exc


class AtomicFilesystemTransport(kombu_filesystem.Transport):
    """The embedded broker's transport (``p2fs://``): files in one folder, atomic writes."""

    Channel = AtomicFilesystemChannel


# Every process that imports this module (API, worker, beat) can open ``p2fs://`` URLs.
TRANSPORT_ALIASES[EMBEDDED_SCHEME] = f"{__name__}:AtomicFilesystemTransport"


def is_embedded(settings: Settings | None = None) -> bool:
    """True when no ``REDIS_URL`` is configured and the file broker is used."""
    settings = settings or get_settings()
    return not settings.redis_url


def broker_url(settings: Settings | None = None) -> str:
    """``REDIS_URL``, or the embedded broker's URL."""
    settings = settings or get_settings()
    return settings.redis_url or f"{EMBEDDED_SCHEME}://"


def embedded_folders(settings: Settings | None = None) -> dict[str, Path]:
    """The embedded broker's folders (created on demand): messages, delivered messages and
    exchange tables."""
    settings = settings or get_settings()
    root = Path(settings.broker_dir)
    folders = {
        "messages": root / "messages",
        "processed": root / "processed",
        "control": root / "control",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def visibility_timeout_s(settings: Settings | None = None) -> int:
    """Redis re-delivers unacked messages after this; it must exceed the hard time limit."""
    settings = settings or get_settings()
    return int(settings.job_time_limit_s) + 3600


def transport_options(settings: Settings | None = None) -> dict[str, Any]:
    """Broker transport options for the configured broker (client and worker alike)."""
    settings = settings or get_settings()
    if is_embedded(settings):
        folders = embedded_folders(settings)
        return {
            "data_folder_in": str(folders["messages"]),
            "data_folder_out": str(folders["messages"]),
            "control_folder": str(folders["control"]),
            # Delivery moves a message file into this folder: a rename within one file system
            # is atomic, so two consumers can never both take it (the default, the system's
            # temporary folder, may be another file system, where a move is copy + delete).
            "store_processed": True,
            "processed_folder": str(folders["processed"]),
            "polling_interval": 0.5,
        }
    return {
        "visibility_timeout": visibility_timeout_s(settings),
        # Fail a send on a dead Redis in ~2 s instead of the OS's TCP timeout (minutes).
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        # Above the 1 s blocking pop of the consumer, so an idle worker is not cut off.
        "socket_timeout": 30.0,
        "max_retries": 1,
    }


def make_client(settings: Settings | None = None) -> Celery:
    """A Celery *client* bound to the configured broker (it only sends; no task is defined)."""
    settings = settings or get_settings()
    client = Celery("p2law-client", broker=broker_url(settings))
    client.conf.update(
        broker_transport_options=transport_options(settings),
        broker_connection_timeout=CONNECT_TIMEOUT_S,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return client


_client: Celery | None = None
_client_url: str | None = None


def get_client() -> Celery:
    """The process-wide client, rebuilt when the broker URL in the settings changes."""
    global _client, _client_url
    url = broker_url()
    if _client is None or _client_url != url:
        _client, _client_url = make_client(), url
    return _client


def reset_client() -> None:
    """Forget the cached client (tests call it after changing the settings)."""
    global _client, _client_url
    _client, _client_url = None, None


class BrokerUnavailableError(Exception):
    """The broker did not accept a message in time."""


def send_job(job_id: str) -> None:
    """Send ``run_job(job_id)`` to the ``gpu`` queue by name; fail fast if the broker is down.

    Raises:
        BrokerUnavailableError: the message was not accepted (the caller keeps the row for
            the reaper).
    """
    try:
        get_client().send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=GPU_QUEUE,
            retry=True,
            retry_policy=SEND_RETRY_POLICY,
        )
    except Exception as exc:  # kombu/redis raise many types; all mean "not sent"
        raise BrokerUnavailableError(f"broker did not accept job {job_id}: {exc}") from exc


def prune_delivered(max_age_s: float = 3600.0, settings: Settings | None = None) -> int:
    """Delete embedded-broker messages delivered more than ``max_age_s`` ago; returns how many.

    Delivered files are kept for a while only so that a delivery is an atomic rename; the job
    rows, not these files, say what happened. No-op with Redis.
    """
    settings = settings or get_settings()
    if not is_embedded(settings):
        return 0
    folder = Path(settings.broker_dir) / "processed"
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for path in folder.glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _redacted(url: str) -> str:
    """The URL without its password (for /health)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def broker_status() -> dict[str, Any]:
    """The broker's state for ``/health``: ``{"ok", "detail", "kind", "url"}``, in ~2 s at most."""
    settings = get_settings()
    if is_embedded(settings):
        try:
            folder = embedded_folders(settings)["messages"]
            writable = os.access(folder, os.W_OK)
        except OSError as exc:
            return {"ok": False, "detail": f"embedded broker folder: {exc}", "kind": "embedded"}
        return {
            "ok": writable,
            "detail": f"embedded (files in {folder})" if writable else f"{folder} is read-only",
            "kind": "embedded",
            "url": broker_url(settings),
        }
    url = broker_url(settings)
    try:
        with get_client().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        return {
            "ok": False,
            "detail": f"redis unreachable: {exc}",
            "kind": "redis",
            "url": _redacted(url),
        }
    return {"ok": True, "detail": "redis", "kind": "redis", "url": _redacted(url)}
