"""The job table of docs/scaling.md (benchmarks/job_memory_table.py): current, and what it says
of 1B, 3B and 8B on 1, 2, 4 and 8 devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.memory import job_memory, min_devices
from benchmarks import job_memory_table as table
from benchmarks.memory_model import DEVICES


def test_docs_hold_the_current_job_table() -> None:
    assert table.current(), (
        "docs/scaling.md is stale: python benchmarks/job_memory_table.py --update-docs"
    )


def test_update_docs_rewrites_only_its_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "scaling.md"
    doc.write_text(
        f"# before\n{table.BEGIN}\nold\n{table.END}\nafter\n"
        f"{table.SPEED_BEGIN}\n{table.SPEED_END}\n"
    )
    assert table.main(["--update-docs", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(f"# before\n{table.BEGIN}\n| model |")
    assert f"{table.END}\nafter\n{table.SPEED_BEGIN}\n| model |" in text and "old" not in text
    assert table.current(doc)
    assert table.main(["--update-docs", str(doc)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_one_row_per_model_method_and_checkpointing() -> None:
    rows = table.table()[2:]
    assert len(rows) == len(table.MODELS) * len(table.METHODS) * 2
    assert all(row.count("|") == 10 for row in rows)


def test_more_devices_need_less_for_training_and_the_same_for_the_preparation() -> None:
    for name in table.MODELS:
        run = table.job(name, "width", True)
        mems = [job_memory(run, n, DEVICES[0].bytes) for n in table.DEVICE_COUNTS]
        assert len({m.preparation.total for m in mems}) == 1
        training = [m.training.total for m in mems]
        assert training[1:] == sorted(training[1:], reverse=True)
    # 1B fits one 80 GB GPU; 8B never does, its states alone are 16 bytes a parameter.
    assert min_devices(table.job("Llama-3.2-1B", "width", True), DEVICES[0].bytes) == 1
    eight = min_devices(table.job("Llama-3.1-8B", "width", True), DEVICES[0].bytes)
    assert eight is not None and eight > 1


def test_the_speed_table_has_every_model_and_method_and_more_devices_take_less_time() -> None:
    rows = table.speed_table()[2:]
    assert len(rows) == len(table.MODELS) * len(table.METHODS)
    for name in table.MODELS:
        run = table.job(name, "width", False)
        hours = [table.hours_per_billion(run, n) for n in table.DEVICE_COUNTS]
        known = [h for h in hours if h is not None]
        assert known == sorted(known, reverse=True)
    # 8B does not fit one 80 GB device even with checkpointing; 1B trains on one.
    assert table.hours_per_billion(table.job("Llama-3.1-8B", "width", False), 1) is None
    one_b = table.hours_per_billion(table.job("Llama-3.2-1B", "width", False), 1)
    assert one_b is not None and 1.0 < one_b < 20.0
