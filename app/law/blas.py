"""Run the optimiser with one BLAS thread.

L-BFGS-B calls BLAS on vectors of a few entries. With OpenBLAS's default of one thread per core,
every such call wakes the thread pool; on a small, shared machine those wake-ups dominate and a
0.1 s fit takes 3 s (measured on 2 cores under load). The law engine therefore asks the OpenBLAS
builds that numpy and scipy ship to use one thread while it optimises, and restores the previous
count afterwards. Where no such library is loaded (another BLAS, another OS) this does nothing.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy  # noqa: F401  (loads numpy's BLAS so it can be found)
import scipy.linalg  # noqa: F401  (loads scipy's BLAS so it can be found)

_LOCK = threading.Lock()
_SUFFIXES = ("", "64_", "_64_")
_PREFIXES = ("scipy_openblas", "openblas")


@lru_cache(maxsize=1)
def _controls() -> tuple[tuple[Any, Any], ...]:
    """(get, set) thread-count functions of every OpenBLAS mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and "/" in line}
    except OSError:
        return ()
    found: list[tuple[Any, Any]] = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            pair = None
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    pair = (get, put)
                    break
            if pair is not None:
                found.append(pair)
                break
    return tuple(found)


class _State:
    depth = 0
    saved: tuple[int, ...] = ()


@contextmanager
def single_thread() -> Iterator[None]:
    """Limit the loaded OpenBLAS libraries to one thread for the duration (re-entrant)."""
    with _LOCK:
        if _State.depth == 0:
            _State.saved = tuple(int(get()) for get, _ in _controls())
            for _, put in _controls():
                put(1)
        _State.depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _State.depth -= 1
            if _State.depth == 0:
                for (_, put), count in zip(_controls(), _State.saved, strict=False):
                    put(count)
