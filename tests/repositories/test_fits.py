"""Fit queries on SQLite and PostgreSQL (each test rolls back)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Fit
from app.repositories import fits


def _fit(family: str | None = "tiny", method: str | None = "depth", **extra: object) -> Fit:
    fit = Fit(
        form="p2",
        family=family,
        method=method,
        run_ids=["r1", "r2"],
        params={"N_C": 1.0, "alpha": 0.3},
        objective=1e-4,
        converged=True,
        message="CONVERGENCE",
        n_starts=8,
        n_observations=30,
        n_runs=2,
        metrics={"r2": 0.99},
        ranges={"tokens": [1e6, 1e8]},
    )
    for name, value in extra.items():
        setattr(fit, name, value)
    return fit


def test_add_fills_id_defaults_and_get_reads_it_back(session: Session) -> None:
    fit = fits.add(session, _fit())
    assert len(fit.id) == 32
    assert (fit.bootstrap, fit.is_default, fit.holdout_metrics) == ([], False, None)
    session.expire_all()
    loaded = fits.get(session, fit.id)
    assert loaded is not None
    assert loaded.params == {"N_C": 1.0, "alpha": 0.3}
    assert loaded.ranges == {"tokens": [1e6, 1e8]}
    assert loaded.created_at.tzinfo is not None
    assert fits.get(session, "0" * 32) is None


def test_list_page_is_newest_first_with_filters(session: Session) -> None:
    now = utcnow()
    old = fits.add(session, _fit(created_at=now - timedelta(hours=2)))
    middle = fits.add(session, _fit(method="width", created_at=now - timedelta(hours=1)))
    new = fits.add(session, _fit(created_at=now))

    page, total = fits.list_page(session)
    assert total == 3
    assert [f.id for f in page] == [new.id, middle.id, old.id]
    page, total = fits.list_page(session, method="depth", offset=1, limit=1)
    assert (total, [f.id for f in page]) == (2, [old.id])
    assert fits.list_page(session, family="other")[1] == 0


def test_set_default_keeps_one_default_per_family_and_method(session: Session) -> None:
    first = fits.add(session, _fit())
    second = fits.add(session, _fit())
    other_method = fits.add(session, _fit(method="width"))
    unscoped = fits.add(session, _fit(family=None, method=None))

    fits.set_default(session, first)
    fits.set_default(session, other_method)
    fits.set_default(session, unscoped)
    assert fits.get_default(session, "tiny", "depth") is first

    fits.set_default(session, second)
    session.expire_all()
    assert fits.get_default(session, "tiny", "depth") is second
    assert fits.get(session, first.id).is_default is False  # type: ignore[union-attr]
    # Other groups keep their defaults; NULL family/method is its own group.
    assert fits.get_default(session, "tiny", "width") is other_method
    assert fits.get_default(session, None, None) is unscoped
    assert fits.get_default(session, "tiny", None) is None


def test_the_id_reads_agree_with_the_row_queries(session: Session) -> None:
    now = utcnow()
    depth = fits.add(session, _fit(created_at=now - timedelta(hours=1)))
    width = fits.add(session, _fit(method="width", created_at=now))
    fits.add(session, _fit(family="other"))
    fits.set_default(session, depth)
    fits.set_default(session, width)
    default = fits.get_default(session, "tiny", "depth")
    assert default is not None and fits.default_id(session, "tiny", "depth") == default.id
    assert fits.default_id(session, "tiny", "2:4") is None
    assert fits.exists(session, depth.id) and not fits.exists(session, "0" * 32)
    assert fits.default_ids(session, "tiny") == [
        ("width", "full", width.id),
        ("depth", "full", depth.id),
    ]
    assert fits.default_ids(session, "none") == []


def test_each_recipe_has_its_own_default_and_filter(session: Session) -> None:
    full = fits.add(session, _fit())
    lora = fits.add(session, _fit(recipe="lora"))
    fits.set_default(session, full)
    fits.set_default(session, lora)
    session.expire_all()
    # Making the LoRA fit a default leaves the full one's in place: one default per recipe.
    assert fits.get_default(session, "tiny", "depth") is full
    assert fits.get_default(session, "tiny", "depth", "lora") is lora
    assert fits.get_default(session, "tiny", "depth", "distill") is None
    assert fits.default_id(session, "tiny", "depth", "lora") == lora.id
    assert fits.default_id(session, "tiny", "depth") == full.id
    assert sorted(fits.default_ids(session, "tiny")) == sorted(
        [("depth", "full", full.id), ("depth", "lora", lora.id)]
    )
    assert fits.defaults(session)[("tiny", "depth", "lora")] == (lora.id, "p2")
    page, total = fits.list_page(session, recipe="lora")
    assert (total, [f.id for f in page]) == (1, [lora.id])
