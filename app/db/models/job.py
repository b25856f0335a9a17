"""Prune → post-train jobs: the database row is the source of truth (docs/reliability.md).

The broker message carries only ``id``. A worker claims the row with one conditional UPDATE that
sets a lease (``lease_owner``, ``lease_expires_at``) and counts ``attempts``; the training loop
renews the lease at heartbeats; a reaper re-sends jobs whose lease expired or whose first send
never succeeded (``enqueued_at`` is null).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow

#: Every status a job can be in; the last three are final.
JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def new_job_id() -> str:
    """A fresh job id: 32 hex characters of a random UUID."""
    return uuid.uuid4().hex


class Job(Base):
    """One queued prune → post-train job and everything known about its progress."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_family_method", "family", "method"),
        Index("ix_jobs_idempotency_key", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    family: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    tokens_done: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    measured: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    artifact: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    stopped_early: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stopped_at_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    warnings: Mapped[list[str]] = mapped_column(JSONType, default=list)
    resumed_from_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, attempts={self.attempts!r})"
