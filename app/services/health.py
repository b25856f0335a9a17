"""Use-case behind `GET /health`: liveness plus the database's and the broker's state.

Never raises: a failing dependency makes the status "degraded", it does not make /health 500.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.metadata
import tomllib
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from app.core.config import PROJECT_ROOT
from app.db.session import get_engine

#: The broker probe runs in a thread and is abandoned after this long.
BROKER_TIMEOUT_S = 3.0


def service_version() -> str:
    """The installed package's version, else pyproject.toml's (a source checkout)."""
    try:
        return importlib.metadata.version("p2law")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with (PROJECT_ROOT / "pyproject.toml").open("rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


VERSION = service_version()

_probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health")


def database_status() -> dict[str, Any]:
    """`{"ok", "detail"}` after one `SELECT 1` on a pooled connection."""
    try:
        engine = get_engine()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"ok": True, "detail": engine.dialect.name}
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


def _broker_probe() -> Callable[[], Any] | None:
    try:
        queue = importlib.import_module("app.core.queue")
    except ImportError:
        return None
    probe = getattr(queue, "broker_status", None)
    return probe if callable(probe) else None


def broker_status() -> dict[str, Any]:
    """The broker's state from `app.core.queue.broker_status()`, bounded by a timeout."""
    probe = _broker_probe()
    if probe is None:
        return {"ok": False, "detail": "no broker configured in this build"}
    future = _probe_pool.submit(probe)
    try:
        state = future.result(timeout=BROKER_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        return {"ok": False, "detail": f"broker did not answer within {BROKER_TIMEOUT_S:g} s"}
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if isinstance(state, dict):
        out = {str(k): v for k, v in state.items()}
        out["ok"] = bool(out.get("ok", False))
        if "detail" in out and out["detail"] is not None:
            out["detail"] = str(out["detail"])
        return out
    return {"ok": bool(state), "detail": None}


def health() -> dict[str, Any]:
    """The service's state; "degraded" when the database or the broker is not ok."""
    database = database_status()
    broker = broker_status()
    status = "ok" if database["ok"] and broker["ok"] else "degraded"
    return {"status": status, "database": database, "broker": broker, "version": VERSION}
