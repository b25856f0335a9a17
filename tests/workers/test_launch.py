"""The launcher: what a group's exit means for the job."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from app.services.job_lease import Lease
from tests.workers.ml.pipeline_helpers import MEASURED
from workers import launch
from workers.ml.job import OUTCOME, JobOutcome, JobSpec

OUTCOME_JSON = OUTCOME.dump_json(JobOutcome("succeeded", MEASURED, [], None, None)).decode()


def _spec() -> JobSpec:
    request = JobRequest.model_validate(
        {"model": "m", "method": "depth", "rho": 0.25, "tokens": 4096, "dataset": {"path": "d"}}
    )
    return JobSpec.build(request, JobPaths("/m", Path("/d"), None), cuda=False)


def _group(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Make the 'group' a Python one-liner that runs ``script`` in the work directory."""

    def command(devices: int, workdir: Path, *_: object) -> list[str]:
        return [sys.executable, "-c", f"import os; os.chdir({str(workdir)!r}); {script}"]

    monkeypatch.setattr(launch, "_command", command)


def _launch(tmp_path: Path) -> JobOutcome:
    return launch.launch_group(
        _spec(),
        devices=2,
        workdir=tmp_path / "work",
        artifact_dir=tmp_path / "artifact",
        lease=Lease("job", "owner", 30.0),
        lease_lost=threading.Event(),
        restarts=2,
    )


def test_a_rank_that_dies_in_teardown_after_the_outcome_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 has written the outcome, then a rank aborts as the group tears down (gloo does):
    the job has ended, once; a relaunch would train again from the last state."""
    _group(
        monkeypatch,
        "open('launches', 'a').write('x'); "
        f"open({launch.OUTCOME_FILE!r}, 'w').write({OUTCOME_JSON!r}); os.abort()",
    )
    outcome = _launch(tmp_path)
    assert outcome.status == "succeeded"
    assert (tmp_path / "work" / "launches").read_text() == "x"


def test_a_group_killed_before_its_outcome_is_launched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _group(
        monkeypatch,
        "n = len(open('launches').read()) if os.path.exists('launches') else 0; "
        "open('launches', 'a').write('x'); "
        f"n == 2 and open({launch.OUTCOME_FILE!r}, 'w').write({OUTCOME_JSON!r}); "
        "os._exit(0 if n == 2 else 137)",
    )
    assert _launch(tmp_path).status == "succeeded"
    assert (tmp_path / "work" / "launches").read_text() == "xxx"


def test_a_group_that_never_ends_its_job_fails_after_its_relaunches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _group(monkeypatch, "open('launches', 'a').write('x'); os._exit(137)")
    with pytest.raises(launch.GroupFailedError, match="3 times"):
        _launch(tmp_path)
    assert (tmp_path / "work" / "launches").read_text() == "xxx"
