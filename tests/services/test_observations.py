"""Observation upload: CSV parsing and duplicate counting on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.core.errors import PayloadTooLarge, Unprocessable
from app.services.observations import add_observations, list_observations, parse_csv

HEADER = "run_id,family,method,n0,rho,l0,tokens,loss"
ROW = {
    "run_id": "r",
    "family": "f",
    "method": "depth",
    "n0": 1e9,
    "rho": 0.25,
    "l0": 2.5,
    "tokens": 1e8,
    "loss": 2.7,
}


def test_csv_columns_may_come_in_any_order_and_blank_lines_are_skipped() -> None:
    text = "loss,tokens,l0,rho,n0,method,family,run_id\n2.7,1e8,2.5,0.25,1e9,depth,f,r\n\n"
    rows = parse_csv(text, max_rows=10)
    assert rows == [{**ROW, "protocol": None, "source": None, "recipe": "full"}]


def test_a_csv_recipe_column_is_read_and_an_empty_cell_is_full() -> None:
    text = (
        HEADER + ",recipe\nr,f,depth,1e9,0.25,2.5,1e8,2.7,lora\nr,f,depth,1e9,0.25,2.5,2e8,2.6,\n"
    )
    rows = parse_csv(text, max_rows=10)
    assert [row["recipe"] for row in rows] == ["lora", "full"]


def test_a_csv_with_an_unknown_recipe_is_refused_with_its_line() -> None:
    text = HEADER + ",recipe\nr,f,depth,1e9,0.25,2.5,1e8,2.7,qlora\n"
    with pytest.raises(Unprocessable, match="CSV line 2: recipe"):
        parse_csv(text, max_rows=10)


def test_a_csv_over_the_row_limit_is_payload_too_large() -> None:
    text = HEADER + "\n" + "".join(f"r,f,depth,1e9,0.25,2.5,{t},2.7\n" for t in range(1, 5))
    with pytest.raises(PayloadTooLarge, match="3 rows"):
        parse_csv(text, max_rows=3)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "Infinity"])
def test_csv_non_finite_values_are_refused_with_the_line(value: str) -> None:
    text = HEADER + f"\nr,f,depth,1e9,0.25,2.5,{value},2.7\n"
    with pytest.raises(Unprocessable, match="CSV line 2: tokens"):
        parse_csv(text, max_rows=10)


def test_duplicates_are_counted_not_stored(session: Session) -> None:
    assert add_observations(session, [ROW, {**ROW, "tokens": 2e8}]) == (2, 0)
    assert add_observations(session, [ROW, ROW, {**ROW, "tokens": 3e8}]) == (1, 2)
    rows, total = list_observations(
        session, family="f", method=None, run_id="r", offset=0, limit=10
    )
    assert total == 3 and [r.tokens for r in rows] == [1e8, 2e8, 3e8]
    assert add_observations(session, []) == (0, 0)
