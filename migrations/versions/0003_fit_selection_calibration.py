"""fits: the form comparison of an `auto` fit and the calibration of its prediction intervals

Revision ID: 0003_fit_selection_calibration
Revises: 0002_jobs
Create Date: 2026-11-29 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.base import JSONType

revision: str = "0003_fit_selection_calibration"
down_revision: str | None = "0002_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``fits.selection`` and ``fits.calibration`` (both nullable JSON)."""
    with op.batch_alter_table("fits") as batch:
        batch.add_column(sa.Column("selection", JSONType, nullable=True))
        batch.add_column(sa.Column("calibration", JSONType, nullable=True))


def downgrade() -> None:
    """Drop the two columns."""
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("calibration")
        batch.drop_column("selection")
