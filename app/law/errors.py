"""Errors raised by the law engine.

All derive from `ValueError` through `LawError`, so a caller that maps "bad input" to a 422 can
catch one class; services translate them into HTTP errors, the law never mentions HTTP.
"""

from __future__ import annotations


class LawError(ValueError):
    """A request the law cannot answer as asked (missing rule argument, unmatched run, ...)."""


class UnknownForm(LawError):
    """A form name that is not in the registry."""


class NotEnoughData(LawError):
    """Fewer observations than parameters, or an empty side of a hold-out split."""


class UnreachableTarget(LawError):
    """A target loss at or below the law's floor (its D → ∞ limit)."""

    def __init__(self, target_loss: float, floor_loss: float) -> None:
        self.target_loss = float(target_loss)
        self.floor_loss = float(floor_loss)
        super().__init__(
            f"target loss {self.target_loss:.6g} is unreachable: the law's floor "
            f"(its limit as tokens grow without bound) is {self.floor_loss:.6g}; "
            f"ask for a target above {self.floor_loss:.6g}"
        )
