"""The optimiser's one-thread BLAS setting is scoped and restored."""

from __future__ import annotations

from app.law.blas import _controls, single_thread


def test_single_thread_sets_one_thread_inside_and_restores_outside() -> None:
    before = [int(get()) for get, _ in _controls()]
    with single_thread():
        assert all(int(get()) == 1 for get, _ in _controls())
        with single_thread():
            assert all(int(get()) == 1 for get, _ in _controls())
        assert all(int(get()) == 1 for get, _ in _controls())
    assert [int(get()) for get, _ in _controls()] == before
