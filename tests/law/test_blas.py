"""The optimiser's one-thread BLAS setting is scoped and restored."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info, threadpool_limits

from app.law.blas import single_thread


def _blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded now, read afresh."""
    return [int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_single_thread_sets_one_thread_inside_and_restores_outside() -> None:
    assert _blas_threads(), "numpy and scipy load a BLAS whose threads can be set"
    with threadpool_limits(limits=3, user_api="blas"):
        assert set(_blas_threads()) == {3}
        with single_thread():
            assert set(_blas_threads()) == {1}
            with single_thread():
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {3}


def test_blocks_in_two_threads_keep_one_thread_until_the_last_closes() -> None:
    inside = threading.Event()
    leave = threading.Event()
    seen: list[list[int]] = []

    def other() -> None:
        with single_thread():
            inside.set()
            leave.wait(10)
            seen.append(_blas_threads())

    with threadpool_limits(limits=3, user_api="blas"):
        worker = threading.Thread(target=other)
        with single_thread():
            worker.start()
            assert inside.wait(10)
        # This thread's block is closed, the other's is still open: still one thread.
        assert set(_blas_threads()) == {1}
        leave.set()
        worker.join(10)
        assert seen and set(seen[0]) == {1}
        assert set(_blas_threads()) == {3}
