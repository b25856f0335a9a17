"""`p2law jobs` (app/cli_jobs.py): the progress line, ETA and exit codes, then the commands
against a live service — uvicorn in a subprocess on SQLite and the embedded file broker — with a
real Celery worker process running a tiny job that `p2law jobs submit --watch` follows to its end.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.cli_jobs import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    default_url,
    describe,
    exit_code,
    format_eta,
    format_tokens,
    jobs_table,
    progress_bar,
    progress_line,
    watch,
)
from app.client import ServiceError
from app.db.migrate import upgrade
from app.db.session import session_scope
from app.repositories import observations as observations_repo
from app.schemas.jobs import EXAMPLE_JOB_OUT, JobOut, JobPage
from app.schemas.observations import ObservationOut
from tests.api.test_jobs import job_request
from tests.live_service import Service, free_port, service_env, start_service
from tests.test_client import observation_json
from tests.workers import conftest as worker_fixtures
from tests.workers.conftest import WorkerFactory

# The worker tests' fixtures (a tiny pretrained Llama and its corpus in the test's roots, real
# worker processes), made visible to pytest in this module.
tiny_assets = worker_fixtures.tiny_assets
job_roots = worker_fixtures.job_roots
worker_factory = worker_fixtures.worker_factory

P2LAW = Path(sys.executable).parent / "p2law"


# --- units: formatting, exit codes, the watch loop on a stand-in service ---------------------


def job_out(status: str, done: int = 0, total: int = 1000, **overrides: Any) -> JobOut:
    """The API's example job with another status and progress."""
    body: dict[str, Any] = {
        **EXAMPLE_JOB_OUT,
        "status": status,
        "progress": {
            "tokens_done": done,
            "tokens_total": total,
            "fraction": done / total,
            "eta_s": overrides.pop("eta_s", None),
        },
        "artifact": overrides.pop("artifact", None),
        "warnings": overrides.pop("warnings", []),
    }
    body.update(overrides)
    return JobOut.model_validate(body)


def observation(tokens: float, loss: float) -> ObservationOut:
    return ObservationOut.model_validate(observation_json(tokens, loss))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (float("nan"), "?"),
        (-1.0, "?"),
        (0.4, "0s"),
        (42.4, "42s"),
        (59.6, "1m00s"),
        (185, "3m05s"),
        (7380, "2h03m"),
        (93_600, "1d02h"),
    ],
)
def test_eta_is_short_and_unknown_is_a_question_mark(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_tokens_bar_and_percentage() -> None:
    assert [format_tokens(t) for t in (768, 7680, 12_345_678, 1.2e9, 2e12)] == [
        "768",
        "7.7k",
        "12.3M",
        "1.20B",
        "2.00T",
    ]
    assert progress_bar(0, 1000, width=10) == "[..........]"
    assert progress_bar(250, 1000, width=10) == "[##........]"
    assert progress_bar(1000, 1000, width=10) == "[##########]"
    assert progress_bar(5, 0, width=4) == "[....]"  # no total yet: an empty bar, no division
    line = progress_line(job_out("running", 999, 1000, eta_s=3.0), observation(768, 3.91234))
    assert line == (
        "running     [#######################.]   99%  999/1.0k tokens  ETA 3s"
        "  loss 3.9123 at 768 tokens"
    )
    assert progress_line(job_out("queued"), None) == "queued      waiting for a worker"


def test_exit_codes_follow_the_outcome() -> None:
    assert (exit_code("succeeded"), exit_code("failed"), exit_code("cancelled")) == (0, 1, 3)
    assert (EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED, EXIT_INTERRUPTED) == (
        0,
        1,
        2,
        3,
        130,
    )
    with pytest.raises(ValueError, match="not final"):
        exit_code("running")


def test_default_url_is_p2law_url_else_the_local_port() -> None:
    assert default_url({}) == "http://127.0.0.1:8000"
    assert default_url({"PORT": "9001"}) == "http://127.0.0.1:9001"
    assert default_url({"PORT": "9001", "P2LAW_URL": "http://h:1"}) == "http://h:1"


@dataclass
class StandIn:
    """The service as `watch` reads it: each ``job`` call returns the next state."""

    states: list[tuple[JobOut, ObservationOut | None]]
    calls: int = 0
    sleeps: list[float] = field(default_factory=list)

    def job(self, job_id: str) -> JobOut:
        self.calls += 1
        return self.states[min(self.calls, len(self.states)) - 1][0]

    def last_observation(self, job_id: str) -> ObservationOut | None:
        return self.states[min(self.calls, len(self.states)) - 1][1]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _states(final: JobOut) -> list[tuple[JobOut, ObservationOut | None]]:
    return [
        (job_out("queued"), None),
        (job_out("running", 0, 1000), None),
        (job_out("running", 500, 1000, eta_s=30.0), None),
        (job_out("running", 500, 1000, eta_s=25.0), None),  # only the ETA moved: no new line
        (job_out("running", 500, 1000, eta_s=25.0), observation(500, 3.5)),
        (final, observation(1000, 3.25)),
    ]


@pytest.mark.parametrize(
    ("final", "code", "summary"),
    [
        (
            job_out("succeeded", 1000, 1000, artifact="/a/j"),
            0,
            "succeeded: 1.0k/1.0k tokens, final loss 3.2500 at 1.0k tokens; artifact /a/j",
        ),
        (job_out("failed", 750, 1000, error="CUDA out of memory"), 1, "failed after 750/1.0k"),
        (job_out("cancelled", 1000, 1000), 3, "cancelled: 1.0k/1.0k tokens, final loss 3.2500"),
    ],
)
def test_watch_prints_a_line_per_change_and_exits_with_the_outcome(
    final: JobOut, code: int, summary: str
) -> None:
    service = StandIn(_states(final))
    out, err = io.StringIO(), io.StringIO()
    assert watch(service, "j", interval=0.5, out=out, err=err, sleep=service.sleep) == code
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, lines
    assert lines[0].startswith("queued") and "waiting for a worker" in lines[0]
    assert "ETA 30s" in lines[2] and "loss —" in lines[2]
    assert "ETA 25s" in lines[3] and "loss 3.5000 at 500 tokens" in lines[3]
    assert lines[-1].startswith(summary), lines[-1]
    if code == 1:
        assert lines[-1].endswith(": CUDA out of memory")
    assert service.sleeps == [0.5] * 5 and "\r" not in out.getvalue()


def test_watch_on_a_terminal_redraws_one_line_and_prints_warnings() -> None:
    final = job_out("succeeded", 1000, 1000, warnings=["refit failed: too few runs"])
    service = StandIn([(job_out("running", 10, 1000, eta_s=4000.0), None), (final, None)])
    out, err = io.StringIO(), io.StringIO()
    assert watch(service, "j", interval=1, out=out, err=err, tty=True, sleep=service.sleep) == 0
    before, first, rest = out.getvalue().split("\r")
    assert before == "" and "ETA 1h06m" in first and "\n" not in first
    # The shorter line is padded to wipe the end of the longer one it overwrites.
    redraw, summary = rest.split("\n", 1)
    assert len(redraw) == len(first) and redraw.startswith("succeeded")
    assert summary.startswith("succeeded: 1.0k/1.0k tokens, no loss recorded")
    assert err.getvalue() == "warning: refit failed: too few runs\n"


def test_ctrl_c_stops_watching_and_says_how_to_cancel() -> None:
    service = StandIn([(job_out("running", 10, 1000), None)])

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    assert watch(service, "abc", interval=1, out=out, err=err, sleep=interrupted) == 130
    assert "job abc goes on" in err.getvalue() and "p2law jobs cancel abc" in err.getvalue()


def test_list_table_and_show_text() -> None:
    page = JobPage.model_validate({"items": [EXAMPLE_JOB_OUT], "total": 3, "offset": 0, "limit": 1})
    header, row, more = jobs_table(page).splitlines()
    assert header.split() == ["id", "status", "family", "method", "progress", "created", "(UTC)"]
    assert row.split() == [
        EXAMPLE_JOB_OUT["id"],
        "succeeded",
        "demo-llama",
        "depth",
        "100%",
        "2026-11-28",
        "17:51:19",
    ]
    assert more == "(1 of 3 jobs; --limit shows more)"
    assert jobs_table(JobPage(items=[], total=0, offset=0, limit=5)) == "no jobs"
    text = describe(JobOut.model_validate(EXAMPLE_JOB_OUT), observation(300032, 3.61))
    assert "status    succeeded (attempt 1 of 3)" in text
    assert "65,824 → 53,472 parameters (rho 0.1877), L0 3.4907, after pruning 3.8011" in text
    assert "loss      3.6100 at 300.0k tokens (latest)" in text
    assert f"artifact  {EXAMPLE_JOB_OUT['artifact']}" in text and "error     —" in text
    assert "warning   refit fe0df58c6566428aaa17cece3891d346" in text


def test_submit_of_a_file_that_is_not_json_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "job.json"
    body.write_text("{not json")
    # The file is read before the service is asked: no service runs here.
    assert main(["jobs", "submit", str(body), "--url", "http://127.0.0.1:9"]) == 2
    assert f"{body} is not JSON" in capsys.readouterr().err
    body.write_text("[1, 2]")
    assert main(["jobs", "submit", str(body), "--url", "http://127.0.0.1:9"]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_a_bad_interval_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["jobs", "watch", "j", "--interval", "0"])
    assert caught.value.code == 2


# --- a live service ----------------------------------------------------------------------


API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with API_KEY set and no worker: a submitted job stays queued (the embedded
    broker keeps its message). Shared by the tests of its xdist group."""
    var = tmp_path_factory.mktemp("keyed-service")
    url = f"sqlite:///{var / 'p2law.sqlite3'}"
    upgrade(url)
    env = service_env(var, url) | {"API_KEY": API_KEY}
    service = start_service(var, env)
    yield service
    service.stop()


def write_job(folder: Path, body: Mapping[str, Any]) -> Path:
    path = folder / "job.json"
    path.write_text(json.dumps(body))
    return path


QUEUED_JOB = job_request()


@pytest.mark.xdist_group("cli-jobs-keyed-service")
def test_cancel_a_queued_job_then_watch_exits_3(
    keyed_service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("P2LAW_URL", keyed_service.url)
    monkeypatch.setenv("API_KEY", API_KEY)
    assert main(["jobs", "submit", str(write_job(tmp_path, QUEUED_JOB))]) == 0
    job_id, status, location = capsys.readouterr().out.split()
    assert (status, location) == ("queued", f"{keyed_service.url}/jobs/{job_id}")

    assert main(["jobs", "list", "--status", "queued", "--method", "depth"]) == 0
    assert any(
        line.split()[:2] == [job_id, "queued"] for line in capsys.readouterr().out.split("\n")
    )

    assert main(["jobs", "cancel", job_id]) == 0
    assert capsys.readouterr().out.split() == [job_id, "cancelled"]

    assert main(["jobs", "watch", job_id, "--interval", "0.2"]) == 3
    assert capsys.readouterr().out.splitlines()[-1].startswith("cancelled: 0/4.1k tokens")

    assert main(["jobs", "cancel", job_id]) == 2
    err = capsys.readouterr().err
    assert f"POST {keyed_service.url}/jobs/{job_id}/cancel: 409" in err
    assert "already cancelled; nothing to cancel" in err

    assert main(["jobs", "show", job_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["status"], shown["request"]["rho"]) == (job_id, "cancelled", 0.25)


@pytest.mark.xdist_group("cli-jobs-keyed-service")
def test_an_unknown_id_is_a_readable_404(
    keyed_service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", API_KEY)
    for command in ("show", "watch", "cancel"):
        assert main(["jobs", command, "no-such-job", "--url", keyed_service.url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("p2law: error: ") and err.count("\n") == 1, err
        assert "404 job 'no-such-job' does not exist (`p2law jobs list`" in err


@pytest.mark.xdist_group("cli-jobs-keyed-service")
def test_a_wrong_or_missing_api_key_is_a_readable_401(
    keyed_service: Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("P2LAW_URL", keyed_service.url)
    job = str(write_job(tmp_path, QUEUED_JOB))
    monkeypatch.setenv("API_KEY", "not-the-key")
    assert main(["jobs", "submit", job]) == 2
    err = capsys.readouterr().err
    assert "401 the X-API-Key header does not match the server's API_KEY" in err
    assert "(set API_KEY to the service's key)" in err
    monkeypatch.delenv("API_KEY")
    assert main(["jobs", "cancel", "any-id"]) == 2
    assert "401 this route needs the X-API-Key header" in capsys.readouterr().err
    # Reads need no key.
    assert main(["jobs", "list"]) == 0


def test_a_service_that_is_down_is_exit_2_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(P2LAW), "jobs", "watch", "some-id"],
        env={**os.environ, "P2LAW_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"p2law: error: cannot reach the p2law service at {url} (connection refused)"
    )
    assert done.stdout == ""


#: 128 tokens per optimizer step (4 sequences of 32 tokens), as tests/workers' jobs.
STEP_TOKENS = 4 * 32


@pytest.mark.slow
@pytest.mark.xdist_group("celery-workers")
def test_submit_watch_follows_a_real_job_to_its_end(
    job_roots: dict[str, Path],
    worker_factory: WorkerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The service, the worker and this test share the test's SQLite file, roots and the
    # embedded broker's folder (tests/conftest.py points them into tmp_path).
    worker_factory.start(extra_env={"REDIS_URL": ""}, wait=False, pool="solo")
    service = start_service(tmp_path, {"REDIS_URL": ""})
    try:
        monkeypatch.setenv("P2LAW_URL", service.url)
        body = {
            "model": "tiny-llama",
            "method": "depth",
            "rho": 0.25,
            "tokens": STEP_TOKENS * 40,
            "dataset": {"path": "corpus.txt", "eval_tokens": 1024},
            "checkpoints": 6,
            "seq_len": 32,
            "batch_size": 4,
            "calib_samples": 8,
            "lr": 3e-4,
            "family": "tiny-llama",
        }
        code = main(
            ["jobs", "submit", str(write_job(tmp_path, body)), "--watch", "--interval", "0.3"]
        )
        out = capsys.readouterr().out
        logs = "\n".join(w.output()[-3000:] for w in worker_factory.workers)
        assert code == 0, f"{out}\n{logs}"
        lines = out.splitlines()
        job_id = lines[0].split()[0]
        assert lines[1].startswith("queued")
        progress = [line for line in lines if line.startswith(("running", "succeeded "))]
        assert progress and all("tokens" in line and "%" in line for line in progress), lines
        with session_scope() as session:
            rows, total = observations_repo.list_page(session, run_id=job_id, limit=100)
        assert total == 6
        final = rows[-1]
        assert lines[-1].startswith(
            f"succeeded: 5.1k/5.1k tokens, final loss {final.loss:.4f} at "
            f"{format_tokens(final.tokens)} tokens; artifact "
        ), lines[-1]
        assert Path(lines[-1].rsplit("; artifact ", 1)[1], "config.json").is_file()

        # The console script on the finished job: the same summary, exit 0.
        again = subprocess.run(
            [str(P2LAW), "jobs", "watch", job_id],
            env={**os.environ, "P2LAW_URL": service.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[-1] == lines[-1]
        assert main(["jobs", "show", job_id]) == 0
        shown = capsys.readouterr().out
        assert "status    succeeded (attempt 1 of " in shown
        assert f"loss      {final.loss:.4f} at {format_tokens(final.tokens)} tokens" in shown
    finally:
        service.stop()


@dataclass
class Flaky(StandIn):
    """A stand-in that answers `answers` polls, then fails with `failures` (statuses, in order),
    then answers again."""

    failures: list[int | None] = field(default_factory=list)
    answers: int = 1
    now: float = 0.0

    def job(self, job_id: str) -> JobOut:
        if self.calls >= self.answers and self.failures:
            status = self.failures.pop(0)
            raise ServiceError("connection refused", status=status, method="GET", url="u")
        return super().job(job_id)

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.now += seconds


def test_watch_waits_out_a_service_that_stops_answering() -> None:
    service = Flaky(_states(job_out("succeeded", 1000, 1000)), failures=[None, 503, 502])
    out, err = io.StringIO(), io.StringIO()
    code = watch(
        service, "j", interval=2, out=out, err=err, sleep=service.sleep, clock=lambda: service.now
    )
    assert code == 0
    notes = err.getvalue().splitlines()
    assert notes[0].startswith("no answer from the service (connection refused)")
    assert "up to 300s" in notes[0] and notes[1] == "the service answers again"
    assert out.getvalue().splitlines()[-1].startswith("succeeded")


def test_watch_gives_up_after_its_patience_and_refusals_are_not_waited_out() -> None:
    down = Flaky([(job_out("running", 1, 10), None)], failures=[None] * 100)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(ServiceError):
        watch(
            down, "j", interval=5, out=out, err=err, sleep=down.sleep,
            patience=12, clock=lambda: down.now,
        )  # fmt: skip
    assert down.now == 20  # answered at 0 s; no answer at 5, 10, 15, 20 s: past 12 s it stops
    missing = Flaky([(job_out("running", 1, 10), None)], failures=[404])
    with pytest.raises(ServiceError):
        watch(missing, "j", interval=5, out=out, err=err, sleep=missing.sleep)
    assert missing.sleeps == [5]  # one answer, then the 404 at once
    never = Flaky([(job_out("running", 1, 10), None)], failures=[None], answers=0)
    with pytest.raises(ServiceError):
        watch(never, "j", interval=5, out=out, err=err, sleep=never.sleep)
    assert never.sleeps == []  # no answer from the start: most likely a wrong URL
