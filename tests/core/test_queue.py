"""The API's Celery client: fast failure on a dead broker, whole messages on the embedded one."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest

from app.core import queue
from app.core.config import get_settings


@pytest.fixture(autouse=True)
def _fresh_client() -> Iterator[None]:
    queue.reset_client()
    yield
    queue.reset_client()


def _connection() -> Any:
    """A new kombu connection to the broker the API's client sends to, with its options."""
    return queue.get_client().connection_for_read()


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
    with _connection() as conn:
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


def _send_jobs_and_receive_them(count: int) -> list[str]:
    """Send ``job-0``, ``job-1``, ... as the API does; the ids in the order a worker gets them."""
    for index in range(count):
        queue.send_job(f"job-{index}")
    received = []
    with _connection() as conn:
        simple = conn.SimpleQueue("gpu")
        for _ in range(count):
            message = simple.get(timeout=2)
            received.append(message.payload[0][0])
            message.ack()
        simple.close()
    return received


def test_embedded_queue_stays_fifo_when_the_clock_gains_a_digit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 999 ms, then 1000 ms: as unpadded numbers in text order the later sends would come first.
    readings = iter([999_000_000, 999_999_999, 1_000_000_000, 1_000_000_001, 10_000_000_000])
    monkeypatch.setattr(queue, "time_ns", lambda: next(readings))
    assert _send_jobs_and_receive_them(5) == [f"job-{index}" for index in range(5)]


def test_embedded_queue_stays_fifo_for_sends_within_one_clock_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue, "time_ns", lambda: 1_700_000_000_000_000_000)
    assert _send_jobs_and_receive_them(20) == [f"job-{index}" for index in range(20)]


def _write_checksummed_messages(count: int, size: int, done: Any) -> None:
    """Put ``count`` messages of ``size`` bytes on queue ``race``, each with its body's SHA-256."""
    try:
        queue.reset_client()  # a client of this process's own, not the forked parent's
        with _connection() as conn:
            channel = conn.default_channel
            for index in range(count):
                body = os.urandom(size // 2).hex()
                digest = hashlib.sha256(body.encode()).hexdigest()
                channel._put("race", {"index": index, "body": body, "sha256": digest})
    finally:
        done.set()


def test_embedded_reader_racing_a_writer_gets_every_message_whole_and_once() -> None:
    count = 200
    # A process, not a thread: the writer runs while the reader polls, not between its polls.
    context = multiprocessing.get_context("fork")
    done = context.Event()
    writer = context.Process(target=_write_checksummed_messages, args=(count, 1_000_000, done))
    received: list[int] = []
    torn: list[str] = []
    deadline = time.monotonic() + 60
    try:
        with _connection() as conn:
            channel = conn.default_channel
            writer.start()
            while time.monotonic() < deadline:
                finished = done.is_set()  # read before polling: a final Empty then means drained
                try:
                    payload = channel._get("race")
                except Empty:
                    if finished:
                        break
                    time.sleep(0.001)  # shorter than a write, so the reader still races it
                    continue
                except ValueError as exc:  # a torn file does not parse
                    torn.append(repr(exc))
                    continue
                body = payload["body"]
                if hashlib.sha256(body.encode()).hexdigest() != payload["sha256"]:
                    torn.append(f"message {payload['index']}: checksum mismatch")
                received.append(payload["index"])
    finally:
        writer.join(timeout=5)
        if writer.is_alive():
            writer.kill()
        # The delivered files are 200 MB.
        shutil.rmtree(queue.embedded_folders()["processed"], ignore_errors=True)
    assert writer.exitcode == 0
    assert torn == []
    assert sorted(received) == list(range(count))


def test_embedded_broker_status_is_ok() -> None:
    status = queue.broker_status()
    assert status["ok"] is True and status["kind"] == "embedded"


def test_redis_settings_keep_the_visibility_timeout_above_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("JOB_TIME_LIMIT_S", "200000")
    get_settings.cache_clear()
    assert queue.transport_options()["visibility_timeout"] > 200_000


def test_broker_status_of_a_live_redis_is_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.workers.conftest import REDIS_BASE, REDIS_TEST_DB, redis_reachable

    url = f"{REDIS_BASE}/{REDIS_TEST_DB}"
    reason = redis_reachable(url)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    assert queue.broker_status() == {"ok": True, "detail": "redis", "kind": "redis", "url": url}
