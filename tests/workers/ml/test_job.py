"""The pure job types: the spec's own JSON, its resume key, the checkpoint schedule, L >= L0."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from tests.workers.ml.pipeline_helpers import MEASURED
from workers.ml.job import OUTCOME, JobOutcome, JobSpec, Measured, below_l0, checkpoint_steps

REQUEST = {
    "model": "tiny",
    "method": "2:4",
    "rho": 0.2,
    "tokens": 4096,
    "dataset": {"path": "corpus.txt", "eval_tokens": 256},
    "devices": 2,
    "stop_rule": {"threshold": 0.5},
}
PATHS = JobPaths("/models/tiny", Path("/data/corpus.txt"), None)


def _spec(**fields: object) -> JobSpec:
    return JobSpec.build(JobRequest.model_validate({**REQUEST, **fields}), PATHS, cuda=False)


def test_the_spec_reaches_a_rank_as_it_was_built() -> None:
    spec = _spec()
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.request.stop_rule == spec.request.stop_rule
    assert (spec.device, spec.dtype) == ("cpu", "float32")
    assert JobSpec.build(spec.request, PATHS, cuda=True).dtype == "bfloat16"
    assert spec.tokens_per_step == 8 * 128 * 2 and spec.total_steps == 2


def test_the_resume_key_ignores_what_changes_no_result() -> None:
    spec = _spec()
    assert _spec(family="other", refit=True, stop_rule=None).resume_key() == spec.resume_key()
    assert _spec(device="cpu").resume_key() == spec.resume_key()
    assert _spec(rho=0.3).resume_key() != spec.resume_key()
    assert _spec(lr=1e-3).resume_key() != spec.resume_key()
    assert spec.model_copy(update={"prune": False}).resume_key() != spec.resume_key()


def test_an_outcome_survives_its_json() -> None:
    measured = Measured(1, 1, 0.1, 3.0, 3.1, "eval:x", 0.01, "constant", {"layers": [1, 2]})
    outcome = JobOutcome("stopped_early", measured, [], Path("/a"), "rule")
    assert OUTCOME.validate_json(OUTCOME.dump_json(outcome)) == outcome


def test_the_job_types_import_neither_torch_nor_the_celery_app() -> None:
    code = (
        "import sys, workers.ml.job, workers.lease, workers.attempt, workers.launch; "
        "print(sorted(m for m in ('torch', 'workers.celery_app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_checkpoints_are_log_spaced_whole_steps_ending_at_the_total() -> None:
    steps = checkpoint_steps(10_000, 12)
    assert steps[0] == 10 and steps[-1] == 10_000 and len(steps) == 12
    ratios = [b / a for a, b in itertools.pairwise(steps)]
    assert max(ratios) / min(ratios) < 1.05
    assert checkpoint_steps(5, 12) == [1, 2, 3, 4, 5]
    assert checkpoint_steps(7, 1) == [7]


def test_losses_below_l0_by_more_than_twice_the_eval_noise_are_marked() -> None:
    m = MEASURED
    assert below_l0(2.99, m) == (False, None)
    assert below_l0(2.981, m)[0] is False
    flagged, note = below_l0(2.97, m)
    assert flagged and note is not None and "not converged" in note
