"""observations and fits: the recovery recipe (full, lora, distill) a loss was measured after

Revision ID: 0005_recipes
Revises: 0004_holdout_protocol_width
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_recipes"
down_revision: str | None = "0004_holdout_protocol_width"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``observations.recipe`` and ``fits.recipe`` (not null); every stored row was a full
    post-training, so the server default ``full`` fills them."""
    with op.batch_alter_table("observations") as batch:
        batch.add_column(
            sa.Column("recipe", sa.String(length=16), nullable=False, server_default="full")
        )
    with op.batch_alter_table("fits") as batch:
        batch.add_column(
            sa.Column("recipe", sa.String(length=16), nullable=False, server_default="full")
        )


def downgrade() -> None:
    """Drop the two columns: the rows of other recipes than ``full`` (observations and fits)
    are deleted first, since without the column they would pass for full post-training."""
    op.execute("DELETE FROM observations WHERE recipe <> 'full'")
    op.execute("DELETE FROM fits WHERE recipe <> 'full'")
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("recipe")
    with op.batch_alter_table("observations") as batch:
        batch.drop_column("recipe")
