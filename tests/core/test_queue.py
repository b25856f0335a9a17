"""The API's Celery client: fast failure on a dead broker, whole messages on the embedded one."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from app.core import queue
from app.core.config import get_settings


@pytest.fixture(autouse=True)
def _fresh_client() -> Iterator[None]:
    queue.reset_client()
    yield
    queue.reset_client()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_send_to_a_dead_redis_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    get_settings.cache_clear()
    started = time.monotonic()
    with pytest.raises(queue.BrokerUnavailableError, match="job-1"):
        queue.send_job("job-1")
    assert time.monotonic() - started < 5.0


def test_broker_status_reports_a_dead_redis_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{_free_port()}/0")
    get_settings.cache_clear()
    started = time.monotonic()
    status = queue.broker_status()
    assert time.monotonic() - started < 5.0
    assert status["ok"] is False and status["kind"] == "redis"
    assert "secret" not in json.dumps(status)


def test_embedded_send_writes_one_whole_message_with_only_the_job_id() -> None:
    queue.send_job("abc123")
    folder = Path(get_settings().broker_dir) / "messages"
    files = sorted(folder.iterdir())
    assert [f.name.endswith(".gpu.msg") for f in files] == [True]
    with Connection(queue.broker_url(), transport_options=queue.transport_options()) as conn:
        simple = conn.SimpleQueue("gpu")
        message = simple.get(timeout=2)
        assert message.headers["task"] == queue.RUN_JOB_TASK
        assert message.payload[0] == ["abc123"]
        message.ack()
        simple.close()
    assert not any(folder.glob("*.msg"))
    # Delivery was a rename into processed/, which the reaper empties later.
    processed = Path(get_settings().broker_dir) / "processed"
    assert len(list(processed.glob("*.msg"))) == 1
    assert queue.prune_delivered(max_age_s=3600) == 0
    assert queue.prune_delivered(max_age_s=0) == 1
    assert not any(processed.glob("*.msg"))


def test_embedded_writer_leaves_no_temporary_file_behind() -> None:
    for index in range(5):
        queue.send_job(f"job-{index}")
    folder = Path(get_settings().broker_dir) / "messages"
    names = [f.name for f in folder.iterdir()]
    assert len(names) == 5
    assert not [n for n in names if n.startswith(".")]


def test_embedded_broker_status_is_ok() -> None:
    status = queue.broker_status()
    assert status["ok"] is True and status["kind"] == "embedded"


def test_redis_settings_keep_the_visibility_timeout_above_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    get_settings.cache_clear()
    options = queue.transport_options()
    assert options["visibility_timeout"] > get_settings().job_time_limit_s
    assert options["socket_connect_timeout"] <= 3


def test_broker_status_of_a_live_redis_is_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.workers.conftest import REDIS_BASE, REDIS_TEST_DB, redis_reachable

    url = f"{REDIS_BASE}/{REDIS_TEST_DB}"
    reason = redis_reachable(url)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    assert queue.broker_status() == {"ok": True, "detail": "redis", "kind": "redis", "url": url}
