"""A fitted law as one value: what predicting, interval-making, recommending and planning need.

A fit leaves several pieces that always travel together: its form, its parameters, the
bootstrap refits, the calibration of its prediction intervals and the ranges of the data it
saw. `FittedLaw` holds them, so that `forecast`, `interval`, `prediction_band`
(`app.law.intervals`), `recommend`, `band_tokens`, `loss_curve` (`app.law.recommend`) and
`plan` (`app.law.plan`) take one argument instead of five. The services build it in one place
from a stored fit or an inline law (`app.services.convert.fitted_law`); an inline law has only
a form and parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.law.errors import LawError
from app.law.forms import Form
from app.law.types import FloatArray, Ranges

if TYPE_CHECKING:
    from app.law.calibration import Calibration


def refit_matrix(form: Form, refits: tuple[Mapping[str, float], ...]) -> FloatArray | None:
    """The refits as one read-only (refits, p) matrix of fit vectors (`Form.params_matrix`);
    None without refits, for a form that predicts set by set, or when the form refuses a refit
    (predicting from the refits themselves then raises that error where it is asked for)."""
    if not refits:
        return None
    try:
        thetas = form.params_matrix(refits)
    except LawError:
        return None
    if thetas is not None:
        thetas.setflags(write=False)
    return thetas


@dataclass(frozen=True, eq=False)
class FittedLaw:
    """One fitted law: its form and parameters (billions convention, docs/law.md §1), the
    bootstrap refits (empty without a bootstrap), the calibration of its prediction intervals
    (None for an inline law; a fit without a bootstrap keeps only its runs, for anchoring) and
    the ranges of the data it was fitted to (None for an inline law: no range warnings).

    ``refit_thetas`` is derived: the refits as `Form.params_matrix`, converted and checked once
    when the law is made, so that every interval from it evaluates the refits in one call.
    """

    form: Form
    params: Mapping[str, float]
    refits: tuple[Mapping[str, float], ...] = ()
    calibration: Calibration | None = None
    ranges: Ranges | None = None
    refit_thetas: FloatArray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "refit_thetas", refit_matrix(self.form, self.refits))

    @property
    def name(self) -> str:
        """The form's registered name (``p2``, ``frantar``, …)."""
        return self.form.name

    @property
    def calibrated(self) -> bool:
        """Whether the law can give prediction intervals (its calibration has residual pools)."""
        return self.calibration is not None and self.calibration.has_pools
