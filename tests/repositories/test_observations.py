"""Observation queries on SQLite and PostgreSQL (each test rolls back)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.db.models import Observation
from app.repositories import observations


def _row(run_id: str, tokens: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "family": "tiny",
        "method": "depth",
        "n0": 1e6,
        "rho": 0.5,
        "l0": 3.0,
        "tokens": tokens,
        "loss": 2.0,
    }
    row.update(extra)
    return row


def test_insert_ignore_counts_duplicates_across_and_within_batches(session: Session) -> None:
    first = [_row("a", 1e6), _row("a", 2e6), _row("b", 1e6)]
    assert observations.insert_ignore(session, first) == 3

    # One stored key, one new key sent twice in the same batch, one new key.
    second = [_row("a", 1e6, loss=9.0), _row("c", 1e6), _row("c", 1e6, loss=9.0), _row("b", 5e6)]
    inserted = observations.insert_ignore(session, second)
    assert inserted == 2
    assert len(second) - inserted == 2

    stored = {(o.run_id, o.tokens): o.loss for o in observations.list_page(session)[0]}
    assert stored[("a", 1e6)] == 2.0  # the stored point won
    assert stored[("c", 1e6)] == 2.0  # the first copy in the batch won
    assert len(stored) == 5


def test_insert_ignore_fills_defaults_and_handles_thousands_of_rows(session: Session) -> None:
    rows = [_row("long", float(t)) for t in range(1, 2_508)]
    assert observations.insert_ignore(session, rows) == len(rows)
    assert observations.insert_ignore(session, rows) == 0
    point = observations.list_page(session, run_id="long", limit=1)[0][0]
    assert (point.protocol, point.source, point.excluded, point.note) == ("", "api", False, None)


def test_insert_ignore_rejects_a_row_without_required_values(session: Session) -> None:
    incomplete = _row("x", 1.0)
    del incomplete["loss"]
    with pytest.raises(ValueError, match="loss"):
        observations.insert_ignore(session, [incomplete])


def test_insert_ignore_of_nothing_stores_nothing(session: Session) -> None:
    assert observations.insert_ignore(session, []) == 0


def test_upsert_replaces_values_of_stored_points(session: Session) -> None:
    observations.insert_ignore(session, [_row("r", 1e6), _row("r", 2e6)])
    loaded = observations.select_for_fit(session, run_ids=["r"])  # now in the identity map
    assert [o.loss for o in loaded] == [2.0, 2.0]

    written = observations.upsert(
        session,
        [
            _row("r", 2e6, loss=1.5, source="job", rho=0.4),
            _row("r", 3e6, loss=1.0),
            _row("r", 3e6, loss=1.25),  # the last copy of a key wins
        ],
    )
    assert written == 2
    points = observations.select_for_fit(session, run_ids=["r"])
    assert [(o.tokens, o.loss) for o in points] == [(1e6, 2.0), (2e6, 1.5), (3e6, 1.25)]
    assert (points[1].source, points[1].rho) == ("job", 0.4)
    assert loaded[1].loss == 1.5  # objects already loaded see the new values


def test_delete_after_removes_only_later_points_of_that_run(session: Session) -> None:
    observations.insert_ignore(
        session, [_row("r", t) for t in (1.0, 2.0, 3.0, 4.0)] + [_row("other", 9.0)]
    )
    assert observations.delete_after(session, "r", 2.0) == 2
    assert [o.tokens for o in observations.select_for_fit(session, run_ids=["r"])] == [1.0, 2.0]
    assert observations.count_by_run(session, "other") == 1
    assert observations.delete_after(session, "r", 2.0) == 0


def test_list_page_filters_orders_and_pages(session: Session) -> None:
    rows = [_row("b", t, method="width") for t in (3.0, 1.0, 2.0)]
    rows += [_row("a", t, family="big") for t in (2.0, 1.0)]
    observations.insert_ignore(session, rows)

    page, total = observations.list_page(session)
    assert total == 5
    assert [(o.run_id, o.tokens) for o in page] == [
        ("a", 1.0),
        ("a", 2.0),
        ("b", 1.0),
        ("b", 2.0),
        ("b", 3.0),
    ]
    page, total = observations.list_page(session, offset=1, limit=2)
    assert total == 5
    assert [(o.run_id, o.tokens) for o in page] == [("a", 2.0), ("b", 1.0)]
    assert observations.list_page(session, family="big")[1] == 2
    assert observations.list_page(session, method="width")[1] == 3
    assert observations.list_page(session, family="big", method="width")[1] == 0
    assert [o.tokens for o in observations.list_page(session, run_id="b", limit=1)[0]] == [1.0]


def test_select_for_fit_leaves_out_excluded_points_unless_asked(session: Session) -> None:
    observations.insert_ignore(
        session,
        [_row("r", 1.0), _row("r", 2.0, excluded=True, note="below l0"), _row("s", 1.0)],
    )
    chosen = observations.select_for_fit(session, family="tiny", method="depth")
    assert [(o.run_id, o.tokens) for o in chosen] == [("r", 1.0), ("s", 1.0)]
    everything = observations.select_for_fit(session, run_ids=["r"], include_excluded=True)
    assert [o.tokens for o in everything] == [1.0, 2.0]
    assert all(isinstance(o, Observation) for o in everything)
    assert observations.select_for_fit(session, run_ids=[]) == []


def test_the_recipe_defaults_to_full_and_selects_filters_and_groups(session: Session) -> None:
    observations.insert_ignore(
        session,
        [_row("f", 1.0), _row("l", 1.0, recipe="lora"), _row("l", 2.0, recipe="lora")],
    )
    assert observations.list_page(session, run_id="f")[0][0].recipe == "full"
    lora = observations.select_for_fit(session, family="tiny", method="depth", recipe="lora")
    assert [(o.run_id, o.tokens) for o in lora] == [("l", 1.0), ("l", 2.0)]
    full = observations.select_for_fit(session, family="tiny", method="depth", recipe="full")
    assert [o.run_id for o in full] == ["f"]
    assert observations.list_page(session, recipe="lora")[1] == 2
    groups = {
        (row["method"], row["recipe"]): row["n_observations"]
        for row in observations.family_method_summaries(session, "tiny")
    }
    assert groups == {("depth", "full"): 1, ("depth", "lora"): 2}
    others = observations.other_runs(
        session, family="tiny", method="depth", protocol="", run_id="x", recipe="lora"
    )
    assert {o.run_id for o in others} == {"l"}


def test_an_upsert_rewrites_the_recipe_of_a_stored_point(session: Session) -> None:
    observations.insert_ignore(session, [_row("u", 1.0)])
    observations.upsert(session, [_row("u", 1.0, recipe="distill")])
    assert observations.list_page(session, run_id="u")[0][0].recipe == "distill"
