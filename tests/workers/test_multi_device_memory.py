"""Host memory of a 2-rank job's load: each rank builds the pruned model on the meta device,
shards it and reads only its shards of the state, so its peak follows its shard, not the model.

The job runs as the other multi-device tests run it (``attempt_job`` → ``launch_group`` →
torchrun → two gloo ranks), and each rank writes ``host-memory-rank<r>.json`` in the work
directory (``workers.ml.host_memory``). A time limit of 2 s makes each attempt save after its
first step and hand the job back, so the work directory (and the reports) stay: the first attempt
loads the state of step 0 (the weights), the second resumes from step 1 (weights and moments).

What is compared is each rank's growth over its load: its peak resident set less the resident
set as the load began. Rank 0 begins higher than rank 1 (~50 MB here): the preparation it ran
alone (the dense model, L0, the pruning) left freed memory in the allocator's heap, which is not
the load's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.config import get_settings
from app.db.session import session_scope
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.workers.conftest import job_row
from workers.attempt import attempt_job, job_dirs
from workers.ml.host_memory import CLEAR_REFS, REPORT_PREFIX

pytestmark = [
    pytest.mark.xdist_group("celery-workers"),
    pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux's /proc/self/clear_refs"),
]

SEQ, BATCH = 32, 4
MiB = 2**20
#: What a rank's load adds besides its shards, whatever the model's size: 38-54 MiB measured on
#: rank 1 (which loads nothing before it) on a 2-core machine, with a 74 MiB and this test's
#: 163 MiB model alike: the token splits (~9 MiB), building the model on the meta device (each
#: layer's parameters are made, then dropped: ~12 MiB) and DCP's reads (each saved tensor is read
#: whole before its shard is kept: ~20 MiB at this model's 6 MiB projections), plus a margin.
#: The bound is then 162 MiB; the passing job's ranks grew by 103-135 MiB, and with the model
#: built whole on every rank before sharding, by 179 (rank 0) and 201 MiB (rank 1).
LOAD_OVERHEAD_BYTES = 64 * MiB
FIGURES = (
    "rss_before_bytes",
    "peak_bytes",
    "growth_bytes",
    "loaded_shard_bytes",
    "model_fp32_bytes",
)


@pytest.fixture
def wide_llama(job_roots: dict[str, Path]) -> Path:
    """A Llama of 57M parameters (217 MiB in fp32; 163 MiB once depth pruning drops 2 of its 8
    layers) in the model root, with the tiny model's tokenizer: wide layers and a small
    vocabulary, so the weights outweigh the fixed costs and no one tensor is a large part."""
    from transformers import PreTrainedTokenizerFast

    from workers.ml.make_model import Shape, build_model

    out = job_roots["model"].parent / "wide-llama"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(job_roots["model"])
    shape = Shape(hidden=768, layers=8, heads=12, kv_heads=12, intermediate=2048)
    model = build_model("llama", shape, len(tokenizer), seq_len=SEQ, tokenizer=tokenizer, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def submit_wide_job() -> str:
    body = {
        "model": "wide-llama",
        "method": "depth",  # no keep-masks: the state is the weights (and moments) alone
        "rho": 0.25,
        "tokens": 8 * 2 * BATCH * SEQ,
        "dataset": {"path": "corpus.txt", "eval_tokens": 256},
        "checkpoints": 2,
        "seq_len": SEQ,
        "batch_size": BATCH,
        "calib_samples": 2,
        "family": "wide-llama",
        "device": "cpu",
        "devices": 2,
        "seed": 1,
    }
    with session_scope() as session:
        job, _ = service.submit(session, JobRequest.model_validate(body))
        return job.id


def load_reports(job_id: str, expected_step: int) -> list[dict[str, Any]]:
    """Both ranks' reports of the attempt that just ran, after checking they are of it."""
    workdir, _ = job_dirs(job_id)
    reports = [json.loads(p.read_text()) for p in sorted(workdir.glob(f"{REPORT_PREFIX}*.json"))]
    assert [(r["rank"], r["world"], r["step"]) for r in reports] == [
        (0, 2, expected_step),
        (1, 2, expected_step),
    ]
    for report in reports:
        assert report["peak_since"] == "phase"
        # shown with ``pytest -s`` (and when the test fails): the figures docs/scaling.md quotes
        print(
            f"step {report['step']} rank {report['rank']}: "
            + ", ".join(f"{k[: -len('_bytes')]} {report[k] / MiB:.1f} MiB" for k in FIGURES)
        )
        assert report["loaded_shard_bytes"] * 2 == report["loaded_whole_bytes"]
    return reports


def test_each_rank_of_a_two_rank_job_loads_about_its_shard(
    wide_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_TIME_LIMIT_S", "2")
    get_settings.cache_clear()
    job_id = submit_wide_job()

    assert attempt_job(job_id) == "requeued", job_row(job_id).error
    reports = load_reports(job_id, expected_step=0)
    model = reports[0]["model_fp32_bytes"]
    assert all(r["loaded_whole_bytes"] == model for r in reports) and model > 150 * MiB
    growths = [r["growth_bytes"] for r in reports]
    assert max(growths) <= 0.6 * model + LOAD_OVERHEAD_BYTES, (growths, model)

    # A resume also loads AdamW's two moments (the state is 3x the weights), which torch makes
    # first by an AdamW step on zero gradients (``_init_optim_state``): the gradients and the
    # update's one temporary add twice the weights' shard for the moment.
    assert attempt_job(job_id) == "requeued", job_row(job_id).error
    reports = load_reports(job_id, expected_step=1)
    shard = reports[0]["loaded_shard_bytes"]
    assert all(r["loaded_whole_bytes"] == 3 * model for r in reports)
    growths = [r["growth_bytes"] for r in reports]
    assert max(growths) <= shard + 2 * model / 2 + LOAD_OVERHEAD_BYTES, (growths, shard)
