"""The claim, lease, attempts and reaper rules, against a real migrated database (no worker)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.migrate import upgrade
from app.db.models.job import Job
from app.db.session import create_engine_for, make_sessionmaker, session_scope
from app.repositories import jobs as repo
from app.services import job_lease, reaper

REQUEST: dict[str, Any] = {
    "model": "tiny",
    "method": "depth",
    "rho": 0.25,
    "tokens": 1000,
    "dataset": {"path": "corpus.txt"},
}


def _job(**values: Any) -> Job:
    fields: dict[str, Any] = {
        "status": "queued",
        "request": REQUEST,
        "family": "tiny",
        "method": "depth",
        "attempts": 0,
        "max_attempts": 3,
        "tokens_total": 1000,
        "warnings": [],
    }
    fields.update(values)
    return Job(**fields)


def test_claim_sets_running_lease_and_counts_the_attempt(session: Session) -> None:
    job = repo.add(session, _job())
    assert repo.claim(session, job.id, "w1", 60.0)
    job = repo.get_fresh(session, job.id)
    assert job is not None
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 1)
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert job.started_at is not None


def test_a_live_lease_cannot_be_claimed_again(session: Session) -> None:
    job = repo.add(session, _job())
    assert repo.claim(session, job.id, "w1", 60.0)
    assert not repo.claim(session, job.id, "w2", 60.0)


def test_an_expired_lease_is_claimed_by_the_next_worker(session: Session) -> None:
    job = repo.add(session, _job())
    assert repo.claim(session, job.id, "w1", 60.0)
    later = utcnow() + timedelta(seconds=61)
    assert repo.claim(session, job.id, "w2", 60.0, now=later)
    job = repo.get_fresh(session, job.id)
    assert job is not None and (job.lease_owner, job.attempts) == ("w2", 2)
    # The old owner can no longer renew or finish.
    assert not repo.heartbeat(session, job.id, "w1", 60.0, now=later)
    assert not repo.finish(session, job.id, "w1", "succeeded", now=later)


def test_a_cancel_requested_or_finished_job_is_not_claimed(session: Session) -> None:
    cancelled = repo.add(session, _job())
    assert repo.request_cancel(session, cancelled.id) == "cancelled"
    assert not repo.claim(session, cancelled.id, "w1", 60.0)
    done = repo.add(session, _job(status="succeeded"))
    assert not repo.claim(session, done.id, "w1", 60.0)


def test_cancel_of_a_running_job_asks_it_to_stop(session: Session) -> None:
    job = repo.add(session, _job())
    assert repo.claim(session, job.id, "w1", 60.0)
    assert repo.request_cancel(session, job.id) == "cancelling"
    job = repo.get_fresh(session, job.id)
    assert job is not None and job.cancel_requested
    # The worker still holds its lease while it reaches the next checkpoint.
    assert repo.heartbeat(session, job.id, "w1", 60.0)
    assert repo.finish(session, job.id, "w1", "cancelled")


def test_two_concurrent_claims_have_exactly_one_winner(db_url: str) -> None:
    upgrade(db_url)
    engine = create_engine_for(db_url)
    try:
        with session_scope(engine) as session:
            job_id = repo.add(session, _job()).id
        factory = make_sessionmaker(engine)
        barrier = threading.Barrier(4)
        wins: list[bool] = []

        def contender(owner: str) -> None:
            barrier.wait()
            with factory() as session:
                won = repo.claim(session, job_id, owner, 60.0)
                session.commit()
            wins.append(won)

        threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == [False, False, False, True]
        with session_scope(engine) as session:
            job = repo.get(session, job_id)
            assert job is not None and job.attempts == 1
    finally:
        engine.dispose()


def test_an_attempt_beyond_max_attempts_fails_the_job_without_running(sqlite_url: str) -> None:
    with session_scope() as session:
        job_id = repo.add(session, _job(status="running", attempts=3, max_attempts=3)).id
        job = repo.get(session, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert job_lease.claim(job_id, "w9", 60.0) is None
    with session_scope() as session:
        job = repo.get(session, job_id)
        assert job is not None
        assert job.status == "failed" and job.attempts == 4
        assert job.error is not None and "3 attempts" in job.error


def test_reaper_sends_unsent_jobs_and_expired_leases_once_per_lease(sqlite_url: str) -> None:
    now = utcnow()
    with session_scope() as session:
        unsent = repo.add(session, _job(created_at=now - timedelta(seconds=60))).id
        fresh = repo.add(session, _job(created_at=now)).id
        sent = repo.add(session, _job(enqueued_at=now, created_at=now - timedelta(seconds=60))).id
        expired = repo.add(
            session,
            _job(
                status="running",
                attempts=1,
                lease_owner="dead",
                lease_expires_at=now - timedelta(seconds=1),
                enqueued_at=now - timedelta(hours=1),
            ),
        ).id
        live = repo.add(
            session,
            _job(status="running", attempts=1, lease_expires_at=now + timedelta(hours=1)),
        ).id
    sent_ids: list[str] = []
    report = reaper.reap(now=now, sender=sent_ids.append)
    assert sorted(report.resent) == sorted([unsent, expired]) == sorted(sent_ids)
    assert fresh not in sent_ids and sent not in sent_ids and live not in sent_ids
    # Just re-sent: the next pass leaves the expired one alone until another lease period.
    again: list[str] = []
    reaper.reap(now=now + timedelta(seconds=1), sender=again.append)
    assert again == []


def test_reaper_ends_jobs_that_cannot_continue(sqlite_url: str) -> None:
    past = utcnow() - timedelta(seconds=5)
    with session_scope() as session:
        cancelling = repo.add(
            session,
            _job(status="cancelling", attempts=1, cancel_requested=True, lease_expires_at=past),
        ).id
        exhausted = repo.add(
            session, _job(status="running", attempts=3, max_attempts=3, lease_expires_at=past)
        ).id
    report = reaper.reap(sender=lambda _job_id: None)
    assert report.cancelled == [cancelling] and report.failed == [exhausted]
    with session_scope() as session:
        assert repo.get(session, cancelling).status == "cancelled"  # type: ignore[union-attr]
        assert repo.get(session, exhausted).status == "failed"  # type: ignore[union-attr]


def test_reaper_keeps_jobs_when_the_broker_is_down(sqlite_url: str) -> None:
    with session_scope() as session:
        job_id = repo.add(session, _job(created_at=utcnow() - timedelta(seconds=60))).id

    def down(_job_id: str) -> None:
        raise ConnectionError("broker down")

    report = reaper.reap(sender=down)
    assert report.send_errors == 1 and report.resent == []
    with session_scope() as session:
        job = repo.get(session, job_id)
        assert job is not None and job.status == "queued" and job.enqueued_at is None


@pytest.mark.parametrize("status", ["queued", "running"])
def test_finish_only_moves_to_final_statuses(session: Session, status: str) -> None:
    job = repo.add(session, _job(status=status))
    with pytest.raises(ValueError, match="final"):
        repo.finish(session, job.id, None, "running")
