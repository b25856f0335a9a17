"""fits: room for the hold-out protocol ``rho-paper`` (nine characters) beside D, N0 and rho

Revision ID: 0004_holdout_protocol_width
Revises: 0003_fit_selection_calibration
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_holdout_protocol_width"
down_revision: str | None = "0003_fit_selection_calibration"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Widen ``fits.holdout_protocol`` from 8 to 16 characters."""
    with op.batch_alter_table("fits") as batch:
        batch.alter_column(
            "holdout_protocol",
            existing_type=sa.String(length=8),
            type_=sa.String(length=16),
            existing_nullable=True,
        )


def downgrade() -> None:
    """Narrow it back; a stored ``rho-paper`` does not fit, so its hold-out is cleared first."""
    op.execute(
        "UPDATE fits SET holdout_protocol = NULL, holdout_metrics = NULL "
        "WHERE length(holdout_protocol) > 8"
    )
    with op.batch_alter_table("fits") as batch:
        batch.alter_column(
            "holdout_protocol",
            existing_type=sa.String(length=16),
            type_=sa.String(length=8),
            existing_nullable=True,
        )
