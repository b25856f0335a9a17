"""The strategies: one numeric recipe on one device and on N, the global batch over any count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import PROJECT_ROOT
from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from workers.ml.job import JobSpec, PipelineError
from workers.ml.strategy import OneDevice


def test_l0_before_sharding_equals_the_sharded_evaluation_in_bf16(tmp_path: Path) -> None:
    """L0 is measured by one process before any sharding, every checkpoint by the group: in
    bf16 both must be the same computation, or L - L0 carries an offset."""
    out = tmp_path / "losses.json"
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(Path(__file__).with_name("strategy_probe.py")),
            str(out),
        ],
        check=False,
        cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    losses = json.loads(out.read_text())
    (alone, alone_err), (group, group_err) = losses["alone"], losses["sharded"]
    assert group == pytest.approx(alone, abs=1e-4)
    assert group_err == pytest.approx(alone_err, rel=1e-2)


def _spec(batch_size: int, devices: int) -> JobSpec:
    request = JobRequest.model_validate(
        {
            "model": "m",
            "method": "depth",
            "rho": 0.25,
            "tokens": 1e6,
            "dataset": {"path": "d"},
            "batch_size": batch_size,
            "devices": devices,
            "device": "cpu",
        }
    )
    return JobSpec.build(request, JobPaths("/m", Path("/d"), None), cuda=False)


def test_the_global_batch_is_the_jobs_whatever_the_processes_that_run_it() -> None:
    assert OneDevice(_spec(4, 2)).per_device_batch(_spec(4, 2)) == 8
    with pytest.raises(PipelineError, match="does not split"):
        strategy = OneDevice(_spec(3, 1))
        strategy.world = 2
        strategy.per_device_batch(_spec(3, 1))
