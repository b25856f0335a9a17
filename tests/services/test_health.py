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
    assert state == {"ok": False, "detail": "broker did not answer within 0.2 s"}


def test_a_failing_broker_probe_degrades_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "_broker_probe", lambda: boom)
    body = health.health()
    assert body["status"] == "degraded"
    assert body["broker"] == {"ok": False, "detail": "ConnectionError: refused"}
    assert body["database"] == {"ok": True, "detail": "sqlite"}


def test_a_build_without_a_broker_is_degraded_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "_broker_probe", lambda: None)
    body = health.health()
    assert body["status"] == "degraded"
    assert body["broker"] == {"ok": False, "detail": "no broker configured in this build"}
