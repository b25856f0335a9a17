"""Run the optimiser with one BLAS thread.

L-BFGS-B calls BLAS on vectors of a few entries. With OpenBLAS's default of one thread per core,
every such call wakes the thread pool; on a small, shared machine those wake-ups dominate and a
0.1 s fit takes 3 s (measured on 2 cores under load). The law engine therefore asks the BLAS
libraries that numpy and scipy load to use one thread while it optimises, and restores the
previous counts afterwards, through threadpoolctl (`threadpool_limits(limits=1,
user_api="blas")`). Where no such library is loaded this does nothing.

OpenBLAS built with pthreads (the build numpy and scipy ship) has one thread pool for the whole
process, so the limit is process-wide: the first block to open, in any thread, sets it, and the
last to close restores the counts. threadpoolctl lets only one thread at a time change such a
pool (its "controlling thread") and otherwise ignores the change silently; the blocks here are
counted process-wide already, so each change hands that control back, and the thread that
closes the last block can restore what another thread set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Protocol

import numpy  # noqa: F401  (loads numpy's BLAS so it can be found)
import scipy.linalg  # noqa: F401  (loads scipy's BLAS so it can be found)
from threadpoolctl import OpenBLASController, ThreadpoolController

_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded now (numpy's and scipy's BLAS), found once:
    finding them scans every loaded library (0.5 ms), and the optimiser enters
    `single_thread` for every start and every bootstrap refit."""
    return ThreadpoolController()


def _release_control() -> None:
    """No thread holds threadpoolctl's control of the process-wide OpenBLAS pool any more."""
    OpenBLASController.clear_controlling_thread(force=True)


class _Limiter(Protocol):
    """What threadpoolctl's limiter (`ThreadpoolController.limit`) offers here."""

    def restore_original_limits(self) -> None: ...


class _State:
    depth = 0
    limiter: _Limiter | None = None  # threadpoolctl's limiter of the outermost block


@contextmanager
def single_thread() -> Iterator[None]:
    """Limit the loaded BLAS libraries to one thread for the duration (re-entrant and
    thread-safe: the outermost of the blocks open in any thread sets the limit, and the last
    one to close restores the counts from before the first)."""
    with _LOCK:
        if _State.depth == 0:
            # What `threadpool_limits(limits=1, user_api="blas")` does, on the pools found once.
            _release_control()
            _State.limiter = _controller().limit(limits=1, user_api="blas")
            _release_control()
        _State.depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _State.depth -= 1
            if _State.depth == 0:
                limiter, _State.limiter = _State.limiter, None
                if limiter is not None:
                    _release_control()
                    limiter.restore_original_limits()
                    _release_control()
