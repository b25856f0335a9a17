"""Observations and fits.

Revision ID: 0001_observations_fits
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_observations_fits"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    # Same type as app.db.base.JSONType: JSON text on SQLite, JSONB on PostgreSQL.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create ``observations`` (unique run_id + tokens) and ``fits`` with their indexes."""
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("n0", sa.Float(), nullable=False),
        sa.Column("rho", sa.Float(), nullable=False),
        sa.Column("l0", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("protocol", sa.String(length=256), server_default="", nullable=False),
        sa.Column("source", sa.String(length=64), server_default="api", nullable=False),
        sa.Column("excluded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint("run_id", "tokens", name=op.f("uq_observations_run_id_tokens")),
    )
    op.create_index("ix_observations_family_method", "observations", ["family", "method"])
    op.create_index("ix_observations_run_id", "observations", ["run_id"])

    op.create_table(
        "fits",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("form", sa.String(length=32), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=True),
        sa.Column("protocol", sa.String(length=256), nullable=True),
        sa.Column("run_ids", _json(), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("objective", sa.Float(), nullable=False),
        sa.Column("converged", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("n_starts", sa.Integer(), nullable=False),
        sa.Column("n_observations", sa.Integer(), nullable=False),
        sa.Column("n_runs", sa.Integer(), nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("holdout_protocol", sa.String(length=8), nullable=True),
        sa.Column("holdout_metrics", _json(), nullable=True),
        sa.Column("ranges", _json(), nullable=False),
        sa.Column("bootstrap", _json(), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fits")),
    )
    op.create_index("ix_fits_family_method_is_default", "fits", ["family", "method", "is_default"])


def downgrade() -> None:
    """Drop both tables (their indexes go with them)."""
    op.drop_index("ix_fits_family_method_is_default", table_name="fits")
    op.drop_table("fits")
    op.drop_index("ix_observations_run_id", table_name="observations")
    op.drop_index("ix_observations_family_method", table_name="observations")
    op.drop_table("observations")
