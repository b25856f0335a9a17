"""API fixtures: an app on a migrated database, optionally seeded with synthetic data; and
helpers that check an error response (status, strict JSON, the ``detail`` it carries).

Seeding (upload + two fits, one with a bootstrap) costs seconds, so it runs once per session
into a template SQLite file; each test that needs it gets its own copy of that file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.db.migrate import upgrade
from app.db.session import create_engine_for, make_sessionmaker, reset_engines
from app.main import create_app
from app.services.fits import create_fit
from app.services.lawref import fit_cache
from app.services.observations import add_observations

#: The constants of p2-vectors.json (billions convention).
LAW: dict[str, float] = {
    "N_C": 0.5,
    "D_C": 0.02,
    "E": 0.05,
    "alpha": 0.3,
    "beta": 0.5,
    "gamma": -0.8,
    "delta": 0.1,
}
SIZES = (5.0e8, 1.0e9, 2.0e9)
RHOS = (0.15, 0.25, 0.35)
TOKENS = tuple(float(t) for t in np.geomspace(1.0e7, 3.0e9, 8))
FAMILY = "llama-3"


def p2_loss(params: dict[str, float], n0: Any, rho: Any, l0: Any, tokens: Any) -> Any:
    """The P² law written out independently of app.law (docs/law.md §2, billions inside)."""
    nb = np.asarray(n0) / 1e9
    db = np.asarray(tokens) / 1e9
    gap = params["N_C"] / nb ** params["alpha"] + params["D_C"] / db ** params["beta"] + params["E"]
    return (
        np.asarray(l0)
        + (1 / np.asarray(rho)) ** params["gamma"] * (1 / nb) ** params["delta"] * gap
    )


def synthetic_observations(
    method: str = "depth",
    *,
    params: dict[str, float] | None = None,
    noise: float = 0.003,
    seed: int = 0,
    protocol: str = "eval-1",
) -> list[dict[str, Any]]:
    """Observations from known P² constants with multiplicative noise (synthetic)."""
    rng = np.random.default_rng(seed)
    law = params or LAW
    rows = []
    for n0 in SIZES:
        l0 = 2.0 + 0.3 * np.log10(4e9 / n0)
        for rho in RHOS:
            run_id = f"{method}-{n0:.0e}-{rho}"
            for tokens in TOKENS:
                loss = float(p2_loss(law, n0, rho, l0, tokens)) * (1 + noise * rng.normal())
                rows.append(
                    {
                        "run_id": run_id,
                        "family": FAMILY,
                        "method": method,
                        "n0": n0,
                        "rho": rho,
                        "l0": float(l0),
                        "tokens": tokens,
                        "loss": loss,
                        "protocol": protocol,
                        "source": "synthetic",
                    }
                )
    return rows


WIDTH_LAW = {**LAW, "gamma": -0.6, "D_C": 0.03}


class Response(Protocol):
    """What the helpers below read of a TestClient response (httpx's or httpx2's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON: NaN and Infinity, which ``json.loads`` accepts, fail."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"response carries the non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def error_detail(response: Response, status: int) -> Any:
    """The ``detail`` of an error response, after checking its status and that it is JSON."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body = strict_json(response.text)
    assert isinstance(body, dict) and "detail" in body, body
    return body["detail"]


def error_message(response: Response, status: int) -> str:
    """The message of a service error (``{"detail": "<message>"}``) with status ``status``."""
    detail = error_detail(response, status)
    assert isinstance(detail, str) and detail, detail
    return detail


def validation_error(response: Response) -> dict[str, Any]:
    """The one request-validation error of a 422 (``{"detail": [{"loc", "msg", ...}]}``)."""
    detail = error_detail(response, 422)
    assert isinstance(detail, list) and len(detail) == 1, detail
    error = detail[0]
    assert isinstance(error, dict) and {"loc", "msg", "type"} <= set(error), error
    return error


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A migrated SQLite file holding synthetic depth and width runs and their default fits:
    depth with 8 bootstrap refits, width without."""
    folder = tmp_path_factory.mktemp("seeded")
    path = folder / "seeded.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine_for(url)
    factory = make_sessionmaker(engine)
    with factory() as session:
        add_observations(session, synthetic_observations("depth"))
        add_observations(session, synthetic_observations("width", params=WIDTH_LAW, seed=1))
        depth = create_fit(session, family=FAMILY, method="depth", bootstrap=8, make_default=True)
        width = create_fit(session, family=FAMILY, method="width", make_default=True)
        ids = {"depth": depth.id, "width": width.id}
    # Disposing closes the last connection, which checkpoints the WAL into the main file.
    engine.dispose()
    return {"path": path, "fits": ids}


def _use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engines()
    fit_cache.clear()


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    """A client on an empty, migrated SQLite database."""
    fit_cache.clear()
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def seeded(
    seeded_template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A private copy of the seeded database as DATABASE_URL; returns the fit ids by method."""
    path = tmp_path / "seeded-copy.sqlite3"
    shutil.copyfile(seeded_template["path"], path)
    _use_database(monkeypatch, f"sqlite:///{path}")
    return dict(seeded_template["fits"])


@pytest.fixture
def seeded_client(seeded: dict[str, str]) -> Iterator[TestClient]:
    """A client on a copy of the seeded database."""
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def any_client(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A client on a fresh migrated database of each backend (SQLite and PostgreSQL)."""
    upgrade(db_url)
    _use_database(monkeypatch, db_url)
    with TestClient(create_app()) as test_client:
        yield test_client
    reset_engines()
