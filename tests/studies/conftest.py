"""Fixtures of the study tests."""

from __future__ import annotations

from typing import Any

import pytest

from workers.ml import train


@pytest.fixture
def made_trainers(monkeypatch: pytest.MonkeyPatch) -> list[train.Trainer]:
    """Every job ``Trainer`` the test makes, in order (a study's probe must time the job's own)."""
    made: list[train.Trainer] = []

    class Recorded(train.Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train, "Trainer", Recorded)
    return made
