"""The health use-case never raises: slow or failing dependencies degrade it."""

from __future__ import annotations

import time

import pytest

from app.services import health


def test_a_hanging_broker_probe_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "BROKER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(health, "_broker_probe", lambda: lambda: time.sleep(2))
    start = time.perf_counter()
    state = health.broker_status()
    assert time.perf_counter() - start < 1.5
    assert state["ok"] is False and "did not answer" in state["detail"]


def test_a_failing_broker_probe_degrades_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "_broker_probe", lambda: boom)
    body = health.health()
    assert body["status"] == "degraded"
    assert "refused" in body["broker"]["detail"]
    assert body["database"]["ok"] is True
