"""Observed losses: one row per (run, tokens) checkpoint of a pruned-and-post-trained model."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, utcnow


class Observation(Base):
    """A loss measured on run ``run_id`` after ``tokens`` post-training tokens.

    ``n0``, ``rho``, ``l0`` describe the run (dense parameter count, fraction of it removed
    by pruning, loss of the dense model before pruning; docs/law.md §1); (run_id, tokens) is
    unique so a repeated upload or a resumed job cannot store a point twice. ``excluded``
    marks points left out of fits unless asked for (for example a loss below ``l0`` beyond
    the noise). ``recipe`` is the recovery recipe the run was post-trained with (``full``,
    ``lora``, ``distill``).
    """

    __tablename__ = "observations"
    __table_args__ = (
        UniqueConstraint("run_id", "tokens"),
        Index("ix_observations_family_method", "family", "method"),
        Index("ix_observations_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(128))
    family: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    n0: Mapped[float] = mapped_column(Float)
    rho: Mapped[float] = mapped_column(Float)
    l0: Mapped[float] = mapped_column(Float)
    tokens: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    protocol: Mapped[str] = mapped_column(String(256), default="", server_default="")
    source: Mapped[str] = mapped_column(String(64), default="api", server_default="api")
    # How the pruned model recovered (app.core.recipes): a fit never mixes recipes.
    recipe: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Observation(run_id={self.run_id!r}, tokens={self.tokens!r}, loss={self.loss!r})"
