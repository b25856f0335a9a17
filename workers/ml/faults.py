"""Slowed phases, for the tests that show no rank waits alone inside a collective.

``P2LAW_PAUSE_<PHASE>_S`` (``PREPARE``, ``SAVE``) makes the process that runs that phase sleep
that long in it. Nothing sets these but the tests: a phase of a real 8B job (loading, pruning,
publishing a state) takes this long on its own, and the suite shows a short collective timeout
survives it.
"""

from __future__ import annotations

import os
import time


def pause(phase: str) -> None:
    """Sleep for ``P2LAW_PAUSE_<PHASE>_S`` seconds when it is set."""
    seconds = float(os.environ.get(f"P2LAW_PAUSE_{phase.upper()}_S", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)
