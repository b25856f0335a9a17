"""jobs: queued prune → post-train jobs with leases, attempts and progress

Revision ID: 0002_jobs
Revises: 0001_observations_fits
Create Date: 2026-11-28 16:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.base import JSONType, UTCDateTime

revision: str = "0002_jobs"
down_revision: str | None = "0001_observations_fits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the ``jobs`` table and its indexes."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", JSONType, nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("enqueued_at", UTCDateTime(), nullable=True),
        sa.Column("tokens_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("eta_s", sa.Float(), nullable=True),
        sa.Column("measured", JSONType, nullable=True),
        sa.Column("artifact", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stopped_early", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("stopped_at_tokens", sa.BigInteger(), nullable=True),
        sa.Column("warnings", JSONType, nullable=False),
        sa.Column("resumed_from_tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status", ["status"], unique=False)
        batch_op.create_index("ix_jobs_family_method", ["family", "method"], unique=False)
        batch_op.create_index("ix_jobs_idempotency_key", ["idempotency_key"], unique=True)


def downgrade() -> None:
    """Drop the ``jobs`` table (its indexes go with it)."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_idempotency_key")
        batch_op.drop_index("ix_jobs_family_method")
        batch_op.drop_index("ix_jobs_status")
    op.drop_table("jobs")
