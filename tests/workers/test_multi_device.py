"""Jobs on several devices: FSDP2 over CPU processes (gloo), launched by the task via torchrun.

``attempt_job`` runs in this process as the Celery child would; the ranks are real processes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.config import get_settings
from app.db.session import session_scope
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.workers.conftest import job_row
from workers.attempt import attempt_job, job_dirs

pytestmark = pytest.mark.xdist_group("celery-workers")

SEQ = 32


def submit(**overrides: Any) -> str:
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "method": "2:4",
        "rho": 0.2,
        "tokens": 24 * 8 * SEQ,
        "dataset": {"path": "corpus.txt", "eval_tokens": 1024},
        "checkpoints": 3,
        "seq_len": SEQ,
        "batch_size": 8,
        "lr": 1e-3,
        "calib_samples": 4,
        "family": "tiny-llama",
        "device": "cpu",
        "seed": 1,
    }
    body.update(overrides)
    with session_scope() as session:
        job, _ = service.submit(session, JobRequest.model_validate(body))
        return job.id


def checkpoints(job_id: str) -> list[tuple[float, float]]:
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
        return [(r.tokens, r.loss) for r in rows]


def test_two_processes_match_one_at_the_same_global_batch(job_roots: dict[str, Path]) -> None:
    one = submit(devices=1, batch_size=8)
    two = submit(devices=2, batch_size=4)
    assert attempt_job(one) == "succeeded"
    assert attempt_job(two) == "succeeded", job_row(two).error
    single, sharded = checkpoints(one), checkpoints(two)
    assert [t for t, _ in sharded] == [t for t, _ in single] and len(single) == 3
    for (_, expected), (_, loss) in zip(single, sharded, strict=True):
        assert loss == pytest.approx(expected, rel=0.01)
    first, second = job_row(one), job_row(two)
    assert second.measured["rho"] == first.measured["rho"]
    assert second.measured["l0"] == pytest.approx(first.measured["l0"], rel=1e-6)
    assert second.artifact is not None and (Path(second.artifact) / "config.json").is_file()


def test_the_artifact_of_a_sharded_job_keeps_its_2_4_masks(job_roots: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    job_id = submit(devices=2, batch_size=4, activation_checkpointing=True)
    assert attempt_job(job_id) == "succeeded", job_row(job_id).error
    job = job_row(job_id)
    model = AutoModelForCausalLM.from_pretrained(job.artifact)
    weights = dict(model.named_parameters())
    sparsified = job.measured["details"]["sparsified_layers"]
    assert sparsified
    for name in sparsified:
        groups = weights[f"{name}.weight"].detach().reshape(-1, 4)
        assert int((groups == 0).sum(dim=1).min()) >= 2


@pytest.mark.parametrize(
    "recipe",
    [{"kind": "lora", "rank": 4}, {"kind": "distill", "temperature": 2.0, "alpha": 0.5}],
    ids=lambda r: str(r["kind"]),
)
def test_each_recipe_on_two_processes_matches_one_and_keeps_the_2_4_zeros(
    job_roots: dict[str, Path], recipe: dict[str, Any]
) -> None:
    """FSDP2 shards frozen and trained weights in one group (LoRA) and a frozen teacher beside
    the student (distillation), under activation checkpointing."""
    from transformers import AutoModelForCausalLM

    common = {"recipe": recipe, "tokens": 8 * 8 * SEQ, "checkpoints": 2}
    one = submit(devices=1, batch_size=8, **common)
    two = submit(devices=2, batch_size=4, activation_checkpointing=True, **common)
    assert attempt_job(one) == "succeeded", job_row(one).error
    assert attempt_job(two) == "succeeded", job_row(two).error
    single, sharded = checkpoints(one), checkpoints(two)
    assert [t for t, _ in sharded] == [t for t, _ in single] and len(single) == 2
    for (_, expected), (_, loss) in zip(single, sharded, strict=True):
        assert loss == pytest.approx(expected, rel=0.01)
    job = job_row(two)
    weights = dict(AutoModelForCausalLM.from_pretrained(job.artifact).named_parameters())
    assert not any("lora" in name for name in weights)
    if recipe["kind"] == "lora":
        # The adapters trained with their masked update (each rank gathering a layer's masks
        # in its forward and backward): the merged artifact is the model last measured.
        for job_id, points in ((one, single), (two, sharded)):
            assert artifact_loss(job_id) == pytest.approx(points[-1][1], abs=2e-6)
    for name in job.measured["details"]["sparsified_layers"]:
        groups = weights[f"{name}.weight"].detach().reshape(-1, 4)
        assert int((groups == 0).sum(dim=1).min()) >= 2


def artifact_loss(job_id: str) -> float:
    """The held-out loss of the job's saved artifact, reloaded, measured on the job's held-out
    blocks as the pipeline measures a checkpoint."""
    from transformers import AutoModelForCausalLM

    from app.core.paths import resolve_job_paths
    from workers.ml.job import JobSpec
    from workers.ml.models import load_tokenizer
    from workers.ml.pipeline import job_splits
    from workers.ml.strategy import OneDevice

    job = job_row(job_id)
    request = JobRequest.model_validate(job.request)
    spec = JobSpec.build(request, resolve_job_paths(request), cuda=False)
    blocks = job_splits(spec, load_tokenizer(Path(job.artifact))).eval
    model = AutoModelForCausalLM.from_pretrained(job.artifact)
    loss, _ = OneDevice(spec).held_out_loss(model, blocks, request.batch_size)
    return loss


def test_a_job_asking_for_more_devices_than_the_worker_has_fails_with_the_reason(
    job_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_DEVICES", "2")
    get_settings.cache_clear()
    job_id = submit(devices=3, batch_size=2)
    assert attempt_job(job_id) == "failed"
    job = job_row(job_id)
    assert "devices=3" in job.error and "has 2 CPU processes" in job.error
    assert job.attempts == 1 and checkpoints(job_id) == []


@pytest.mark.parametrize(
    ("method", "recipe"),
    [
        ("depth", {"kind": "full"}),
        # The adapters and their moments come back from the state; the teacher from its own.
        ("2:4", {"kind": "lora", "rank": 4}),
        ("width", {"kind": "distill"}),
    ],
    ids=["full", "lora", "distill"],
)
def test_killing_one_rank_mid_job_resumes_from_the_sharded_checkpoint(
    job_roots: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    recipe: dict[str, Any],
) -> None:
    # A short collective timeout: the dead rank is still told apart from a slow phase.
    monkeypatch.setenv("DIST_TIMEOUT_S", "5")
    job_id = submit(
        devices=2,
        batch_size=4,
        method=method,
        rho=0.25,
        tokens=400 * 8 * SEQ,
        checkpoints=4,
        recipe=recipe,
    )
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(attempt_job(job_id)))
    runner.start()
    workdir, _ = job_dirs(job_id)
    deadline = time.monotonic() + 300
    while len(checkpoints(job_id)) < 3 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(checkpoints(job_id)) == 3, "the job should be between its 3rd and 4th checkpoint"
    os.kill(int((workdir / "rank-1.pid").read_text()), signal.SIGKILL)
    runner.join(timeout=600)
    assert result == ["succeeded"], job_row(job_id).error
    points = checkpoints(job_id)
    assert len(points) == 4 and len({t for t, _ in points}) == 4
    assert job_row(job_id).resumed_from_tokens == points[2][0]


def test_cancel_of_a_sharded_job_ends_it_at_the_next_checkpoint(job_roots: dict[str, Path]) -> None:
    job_id = submit(
        devices=2, batch_size=4, method="depth", rho=0.25, tokens=400 * 8 * SEQ, checkpoints=4
    )
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(attempt_job(job_id)))
    runner.start()
    deadline = time.monotonic() + 300
    while not checkpoints(job_id) and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    with session_scope() as session:
        assert service.cancel(session, job_id).status == "cancelling"
    runner.join(timeout=600)
    assert result == ["cancelled"]
    job = job_row(job_id)
    assert job.status == "cancelled" and job.artifact is None
    assert 1 <= len(checkpoints(job_id)) <= 2


def test_a_short_collective_timeout_survives_a_slow_preparation_and_slow_saves(
    job_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 alone prepares for 15 s and publishes each state for 15 s; with a 5 s collective
    timeout the others must never be waiting for it inside a collective."""
    monkeypatch.setenv("DIST_TIMEOUT_S", "5")
    monkeypatch.setenv("P2LAW_PAUSE_PREPARE_S", "15")
    monkeypatch.setenv("P2LAW_PAUSE_SAVE_S", "15")
    job_id = submit(devices=2, batch_size=4, tokens=16 * 8 * SEQ, checkpoints=2)
    assert attempt_job(job_id) == "succeeded", job_row(job_id).error
    points = checkpoints(job_id)
    assert len(points) == 2 and len({t for t, _ in points}) == 2
    assert job_row(job_id).attempts == 1


def test_a_job_longer_than_its_time_limit_goes_on_in_segments_on_any_device_count(
    job_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt near its JOB_TIME_LIMIT_S (8 s, then 2 s) saves and requeues the job; the next
    one goes on from that state: on 2 processes, then 1, then 2 without a limit to the end. Each
    checkpoint is recorded once and no attempt counts as failed."""
    job_id = submit(devices=2, batch_size=4, tokens=1000 * 8 * SEQ, checkpoints=4)
    results = []
    for count, limit in ((2, "8"), (1, "2"), (2, "86400")):
        monkeypatch.setenv("WORKER_DEVICES", str(count))
        monkeypatch.setenv("JOB_TIME_LIMIT_S", limit)
        get_settings.cache_clear()
        results.append(attempt_job(job_id))
        if count == 1:
            # the state it left was saved by one process, mid-way
            assert 0 < job_row(job_id).tokens_done < 1000 * 8 * SEQ
    assert results == ["requeued", "requeued", "succeeded"], (results, job_row(job_id).error)
    job = job_row(job_id)
    assert job.attempts == 1 and job.status == "succeeded" and job.artifact is not None
    points = checkpoints(job_id)
    assert len(points) == 4 and len({t for t, _ in points}) == 4
    assert points[-1][0] == 1000 * 8 * SEQ


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_in_bf16_and_match_one_within_two_percent(
    job_roots: dict[str, Path],
) -> None:
    one = submit(device="cuda", dtype="bfloat16", devices=1, batch_size=8)
    two = submit(device="cuda", dtype="bfloat16", devices=2, batch_size=4)
    assert attempt_job(one) == "succeeded", job_row(one).error
    assert attempt_job(two) == "succeeded", job_row(two).error
    for (_, expected), (_, loss) in zip(checkpoints(one), checkpoints(two), strict=True):
        assert loss == pytest.approx(expected, rel=0.02)
