"""The pipeline hooks of ``workers.lease`` against a real database (no model, no Celery):
observations per checkpoint, below-L0 marking, resume replacing later points, cancel, early stop,
and a lost lease that stops the attempt from writing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.db.session import session_scope
from app.repositories import jobs as jobs_repo
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import job_lease
from workers.lease import DbHooks, Heartbeat, LeaseLostError
from workers.ml.job import CheckpointPoint, Decision, Measured

MEASURED = Measured(
    n0=1_000_000,
    n_after=750_000,
    rho=0.25,
    l0=2.0,
    loss_after_prune=2.6,
    protocol="eval:abc:seq32:n1024",
    eval_noise=0.01,
    schedule="constant lr=3e-4",
)


def claimed_hooks(sqlite_url: str, **request: Any) -> tuple[DbHooks, str]:
    body: dict[str, Any] = {
        "model": "org/model",
        "method": "depth",
        "rho": 0.25,
        "tokens": 10_000,
        "dataset": {"path": "corpus.txt"},
        "family": "fam",
    }
    body.update(request)
    validated = JobRequest.model_validate(body)
    with session_scope() as session:
        from app.db.models.job import Job

        job = Job(
            status="queued",
            request=validated.model_dump(mode="json"),
            family="fam",
            method="depth",
            max_attempts=3,
            tokens_total=10_000,
            warnings=[],
        )
        jobs_repo.add(session, job)
        job_id = job.id
    claimed = job_lease.claim(job_id, "owner-1", 60.0)
    assert claimed is not None
    hooks = DbHooks(claimed, threading.Event())
    hooks.on_measured(MEASURED)
    return hooks, job_id


def stored(job_id: str) -> list[tuple[float, float, bool]]:
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
        return [(r.tokens, r.loss, r.excluded) for r in rows]


def point(tokens: int, loss: float, below: bool = False) -> CheckpointPoint:
    return CheckpointPoint(tokens, loss, below, "below L0" if below else None)


def test_each_checkpoint_is_one_observation_with_the_measured_values(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    points = [point(100, 2.5), point(1000, 2.3)]
    assert hooks.on_checkpoint(points[0], points[:1]) == (Decision.CONTINUE, None)
    assert hooks.on_checkpoint(points[1], points) == (Decision.CONTINUE, None)
    assert stored(job_id) == [(100.0, 2.5, False), (1000.0, 2.3, False)]
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
        assert {(r.n0, r.rho, r.l0, r.source, r.protocol) for r in rows} == {
            (1e6, 0.25, 2.0, "job", "eval:abc:seq32:n1024")
        }
        job = jobs_repo.get(session, job_id)
        assert job is not None and job.tokens_done == 1000
        assert job.measured is not None and job.measured["loss_after_prune"] == 2.6


def test_points_below_l0_are_excluded_and_the_job_says_why(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    hooks.on_checkpoint(point(100, 1.9, below=True), [point(100, 1.9, below=True)])
    assert stored(job_id) == [(100.0, 1.9, True)]
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None and any("below L0" in w for w in job.warnings)


def test_a_resume_replaces_the_points_the_lost_attempt_stored_later(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    saved = [point(100, 2.5), point(200, 2.4)]
    for index, p in enumerate([*saved, point(400, 2.35)]):
        hooks.on_checkpoint(p, saved[: index + 1])
    hooks.on_resume(200, saved)
    assert stored(job_id) == [(100.0, 2.5, False), (200.0, 2.4, False)]
    hooks.on_checkpoint(point(400, 2.33), [*saved, point(400, 2.33)])
    assert stored(job_id) == [(100.0, 2.5, False), (200.0, 2.4, False), (400.0, 2.33, False)]
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None and job.resumed_from_tokens == 200


def test_a_cancel_request_answers_cancel_at_the_next_checkpoint(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    with session_scope() as session:
        assert jobs_repo.request_cancel(session, job_id) == "cancelling"
    decision, reason = hooks.on_checkpoint(point(100, 2.5), [point(100, 2.5)])
    assert decision is Decision.CANCEL and reason == "cancel requested"


def test_the_stop_rule_answers_stop_with_its_reason(sqlite_url: str) -> None:
    rule = {"kind": "marginal", "threshold": 1e9, "min_checkpoints": 3}
    hooks, _job_id = claimed_hooks(sqlite_url, stop_rule=rule)
    points = [point(t, 2.0 + 0.5 * (t / 1e9) ** -0.1 / 10) for t in (100, 300, 900)]
    assert hooks.on_checkpoint(points[0], points[:1])[0] is Decision.CONTINUE
    assert hooks.on_checkpoint(points[1], points[:2])[0] is Decision.CONTINUE
    decision, reason = hooks.on_checkpoint(points[2], points)
    assert decision is Decision.STOP and reason is not None and "law-guided" in reason


def test_a_lost_lease_stops_the_attempt_without_writing(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None
        job.lease_owner = "someone-else"
    with pytest.raises(LeaseLostError):
        hooks.on_checkpoint(point(100, 2.5), [point(100, 2.5)])
    with pytest.raises(LeaseLostError):
        hooks.on_progress(500, 10_000)
    assert stored(job_id) == []


def test_the_heartbeat_thread_keeps_the_lease_alive_and_notices_a_takeover(
    sqlite_url: str,
) -> None:
    import time

    from app.db.base import utcnow

    hooks, job_id = claimed_hooks(sqlite_url)
    with Heartbeat(job_lease.Lease(job_id, "owner-1", 0.6)) as beat:
        time.sleep(1.5)  # more than two leases: only the thread can have renewed it
        job = job_lease.claim(job_id, "thief", 0.6)
        assert job is None  # still held
        with session_scope() as session:
            row = jobs_repo.get(session, job_id)
            assert row is not None and row.lease_expires_at is not None
            assert row.lease_expires_at > utcnow()
            row.lease_owner = "thief"
        deadline = time.monotonic() + 5
        while not beat.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat.lost.is_set()
    with pytest.raises(LeaseLostError):
        hooks.on_progress(100, 10_000)


def _seed_family_observations() -> None:
    """Enough depth runs of family "fam" for a P² refit (synthetic, known constants)."""
    from dataclasses import asdict

    from app.law.synthetic import make_rows

    rows = [
        {**asdict(r), "family": "fam", "source": "synthetic"}
        for r in make_rows(n_checkpoints=6, seed=1)
        if r.method == "depth"
    ]
    for row in rows:
        row.pop("true_loss")
    with session_scope() as session:
        observations_repo.upsert(session, rows)


def _take_over(job_id: str) -> None:
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None
        job.lease_owner = "someone-else"


def _fit_ids() -> set[str]:
    from app.repositories import fits as fits_repo

    with session_scope() as session:
        fits, _ = fits_repo.list_page(session, family="fam", method="depth")
        return {f.id for f in fits}


def test_a_worker_whose_lease_was_taken_over_adds_no_warning_and_no_refit(
    sqlite_url: str,
) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    _seed_family_observations()
    _take_over(job_id)
    assert not job_lease.add_warning(hooks.lease, "late warning")
    assert job_lease.refit(hooks.lease, "fam", "depth") is None
    assert _fit_ids() == set()
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None and job.warnings == []


def test_a_worker_holding_its_lease_refits_and_names_the_new_default(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    _seed_family_observations()
    fit_id = job_lease.refit(hooks.lease, "fam", "depth")
    assert fit_id is not None and _fit_ids() == {fit_id}
    with session_scope() as session:
        job = jobs_repo.get(session, job_id)
        assert job is not None
        assert job.warnings == [f"refit {fit_id} of fam/depth is now the default fit"]


def test_a_jobs_observations_carry_its_recipe(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url, recipe={"kind": "lora", "rank": 4})
    hooks.on_checkpoint(point(100, 2.5), [point(100, 2.5)])
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
        assert [r.recipe for r in rows] == ["lora"]


def test_a_full_job_records_full(sqlite_url: str) -> None:
    hooks, job_id = claimed_hooks(sqlite_url)
    hooks.on_checkpoint(point(100, 2.5), [point(100, 2.5)])
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
        assert [r.recipe for r in rows] == ["full"]


def test_the_early_stop_learns_from_earlier_runs_of_the_jobs_recipe_only(sqlite_url: str) -> None:
    hooks, _ = claimed_hooks(sqlite_url, recipe={"kind": "distill"})
    base = {"family": "fam", "method": "depth", "n0": 1e6, "rho": 0.25, "l0": 2.0}
    protocol = str(MEASURED.protocol)
    with session_scope() as session:
        observations_repo.upsert(
            session,
            [
                {**base, "run_id": "full-run", "tokens": 1.0, "loss": 3.0, "protocol": protocol},
                {
                    **base,
                    "run_id": "distill-run",
                    "tokens": 1.0,
                    "loss": 2.9,
                    "protocol": protocol,
                    "recipe": "distill",
                },
            ],
        )
    earlier = job_lease.earlier_runs(hooks.claimed, protocol)
    assert [p.run_id for p in earlier] == ["distill-run"]


def test_a_refit_fits_and_sets_the_default_of_the_jobs_recipe_only(sqlite_url: str) -> None:
    from app.repositories import fits as fits_repo

    hooks, job_id = claimed_hooks(sqlite_url)
    _seed_family_observations()
    # No LoRA observations of fam/depth: a LoRA refit fails with a warning and stores nothing.
    assert job_lease.refit(hooks.lease, "fam", "depth", "lora") is None
    fit_id = job_lease.refit(hooks.lease, "fam", "depth", "full")
    with session_scope() as session:
        assert fits_repo.default_id(session, "fam", "depth", "full") == fit_id
        assert fits_repo.default_id(session, "fam", "depth", "lora") is None
        job = jobs_repo.get(session, job_id)
        assert job is not None
        assert job.warnings[0].startswith("refit of fam/depth (lora) failed")
