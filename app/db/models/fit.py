"""Fitted laws: parameters, diagnostics, data ranges and bootstrap refits of one fit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


def new_fit_id() -> str:
    """A fresh fit id: 32 hex characters of a random UUID."""
    return uuid.uuid4().hex


class Fit(Base):
    """One fit of a law ``form`` to the observations of a family/method (or chosen runs).

    ``params`` holds the law's constants by name; ``ranges`` the data ranges it was fitted on
    (predictions outside them carry warnings); ``bootstrap`` a list of refitted parameter dicts
    used for intervals. At most one fit per (family, method, recipe) has ``is_default`` set.
    """

    __tablename__ = "fits"
    __table_args__ = (Index("ix_fits_family_method_is_default", "family", "method", "is_default"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_fit_id)
    form: Mapped[str] = mapped_column(String(32))
    family: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    protocol: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # The recovery recipe of every observation it was fitted on (app.core.recipes).
    recipe: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    run_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    params: Mapped[dict[str, float]] = mapped_column(JSONType)
    objective: Mapped[float] = mapped_column(Float)
    converged: Mapped[bool] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(Text, default="")
    n_starts: Mapped[int] = mapped_column(Integer)
    n_observations: Mapped[int] = mapped_column(Integer)
    n_runs: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    holdout_protocol: Mapped[str | None] = mapped_column(String(16), nullable=True)
    holdout_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    ranges: Mapped[dict[str, Any]] = mapped_column(JSONType)
    bootstrap: Mapped[list[dict[str, float]]] = mapped_column(JSONType, default=list)
    # `form: "auto"`: the forms compared, their error per fold and the one kept (None otherwise).
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Prediction intervals: the out-of-sample residual pools and the measured coverage per
    # protocol (docs/law.md §4); None for fits made before intervals were calibrated.
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Fit(id={self.id!r}, form={self.form!r}, family={self.family!r})"
