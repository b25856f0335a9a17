"""Browser fixtures: a live uvicorn server on a seeded SQLite database, and headless Chromium
pages that may only talk to that server.

- ``live_server`` (session): the app in its own process on a free port of 127.0.0.1, on a copy
  of a migrated database seeded with synthetic depth and width runs of ``llama-3``, a default
  depth fit with bootstrap refits (so the planner draws a band) and a default width fit, and a
  tiny model folder and corpus under its MODEL_ROOT and DATA_ROOT for job submissions. A
  subprocess, not a thread: the settings and engines of the test process are reset by every
  test, the server's must not be.
- ``keyed_server`` (session, started on first use): the same with ``API_KEY`` set.
- ``reference_server`` (session, started on first use): the app as a fresh install has it, an
  empty database migrated and given the shipped reference laws (as the first `make run` does).
- ``web``: a fresh browser context (1366×768) whose requests to any host other than
  127.0.0.1/localhost are aborted and recorded, with the page's uncaught errors and the
  fetches its content policy refused (those never reach the network, so no route sees them).

The system Chromium (``/usr/bin/chromium``) is driven by Playwright; no browser is downloaded.
Without it the tests skip, saying that ``.ci/run`` installs it. Tests that use these fixtures
are marked ``xdist_group("web")`` so that one worker process starts the servers once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.db.migrate import upgrade
from app.db.session import create_engine_for, make_sessionmaker
from app.services.fits import create_fit
from app.services.observations import add_observations
from app.services.reference import load_reference
from tests.api.conftest import FAMILY, WIDTH_LAW, synthetic_observations
from tests.live_service import service_env, start_service

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: A family with observations and no fit in the seeded database.
UNFITTED = "a-fresh-job"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
API_KEY = "web-test-key"
#: Viewport of the laptop screen the page is laid out for.
VIEWPORT = {"width": 1366, "height": 768}


def artifacts_dir() -> Path:
    """Where screenshots go: ``$P2LAW_TEST_ARTIFACTS``, else ``var/test-artifacts/web``."""
    folder = Path(os.environ.get("P2LAW_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts" / "web")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class LiveServer:
    """A running app: its base URL, the key it wants (if any), its database and folders."""

    url: str
    api_key: str | None
    database_url: str
    folder: Path

    def client(self) -> httpx.Client:
        """An HTTP client on this server."""
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="session")
def web_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file with synthetic llama-3 depth and width runs and default fits, and
    one run of a family without a fit (`UNFITTED`)."""
    path = tmp_path_factory.mktemp("web-db") / "seeded.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine_for(url)
    with make_sessionmaker(engine)() as session:
        add_observations(session, synthetic_observations("depth"))
        add_observations(session, synthetic_observations("width", params=WIDTH_LAW, seed=1))
        create_fit(session, family=FAMILY, method="depth", bootstrap=8, make_default=True)
        create_fit(session, family=FAMILY, method="width", make_default=True, coverage=False)
        # A family with runs but no fit yet (a first job's checkpoints), named to sort first:
        # the planner must still open on a family a law answers for.
        fresh = [{**row, "family": UNFITTED, "run_id": f"fresh-{row['run_id']}"}
                 for row in synthetic_observations("depth")[:8]]  # fmt: skip
        add_observations(session, fresh)
    engine.dispose()  # closes the last connection, which checkpoints the WAL into the file
    return path


def _start(folder: Path, database: Path, api_key: str | None) -> Iterator[LiveServer]:
    var = folder / "var"
    var.mkdir()
    copy = var / "p2law.sqlite3"
    shutil.copyfile(database, copy)
    database_url = f"sqlite:///{copy}"
    service = start_service(folder, service_env(var, database_url) | {"API_KEY": api_key or ""})
    try:
        yield LiveServer(url=service.url, api_key=api_key, database_url=database_url, folder=folder)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, web_database: Path
) -> Iterator[LiveServer]:
    """The app on a copy of the seeded database, open to writes."""
    yield from _start(tmp_path_factory.mktemp("server"), web_database, None)


@pytest.fixture(scope="session")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, web_database: Path
) -> Iterator[LiveServer]:
    """The app on another copy of the seeded database, with API_KEY set."""
    yield from _start(tmp_path_factory.mktemp("keyed-server"), web_database, API_KEY)


@pytest.fixture(scope="session")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app on a fresh install's database: migrated, holding only the shipped reference
    observations and default fits (`p2law migrate` on an empty database)."""
    folder = tmp_path_factory.mktemp("reference-db")
    path = folder / "fresh.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine_for(url)
    with make_sessionmaker(engine)() as session:
        load_reference(session, only_if_empty=True)
    engine.dispose()
    yield from _start(tmp_path_factory.mktemp("reference-server"), path, None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless system Chromium driven by Playwright."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)"
        if os.environ.get("P2LAW_REQUIRE_BROWSER"):  # CI: a browser test must not skip
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@dataclass
class WebPage:
    """A page in a fresh context, with what it tried to fetch from elsewhere and its errors."""

    page: Any
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        """Save the page as ``<artifacts>/<name>.png``."""
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def assert_offline(self, refused: int = 0) -> None:
        """Nothing was requested from another host, no script failed, and the content policy
        refused `refused` fetches."""
        assert self.blocked == [], f"requests to other hosts: {self.blocked}"
        assert self.errors == [], f"page errors: {self.errors}"
        assert len(self.refused) == refused, f"refused by the content policy: {self.refused}"


@pytest.fixture
def web(browser: Any) -> Iterator[WebPage]:
    """A page that can reach only 127.0.0.1 and localhost."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    page = context.new_page()
    web_page = WebPage(page=page)

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            web_page.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page.on("pageerror", lambda error: web_page.errors.append(str(error)))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            web_page.refused.append(message.text)

    page.on("console", on_console)
    yield web_page
    context.close()
