"""create_fit / get_fit on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.services.fits import create_fit, get_fit
from app.services.observations import add_observations
from tests.api.conftest import FAMILY, synthetic_observations


def test_create_fit_stores_the_fit_and_makes_the_first_one_default(session: Session) -> None:
    add_observations(session, synthetic_observations())
    fit = create_fit(session, family=FAMILY, method="depth", bootstrap=3, seed=1)
    assert fit.is_default and fit.protocol == "eval-1"
    assert fit.n_observations == 72 and len(fit.run_ids) == 9
    assert len(fit.bootstrap) == 3
    assert get_fit(session, fit.id) is fit
    second = create_fit(session, family=FAMILY, method="depth")
    assert second.is_default is False


def test_selection_without_data_or_with_mixed_protocols_is_refused(session: Session) -> None:
    with pytest.raises(Unprocessable, match="no observations"):
        create_fit(session, family="missing")
    rows = synthetic_observations()[:36] + synthetic_observations(protocol="other")[36:]
    add_observations(session, rows)
    with pytest.raises(Unprocessable, match="mix evaluation protocols"):
        create_fit(session, family=FAMILY)


def test_unknown_fit_is_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match=f"no fit with id '{'0' * 32}'"):
        get_fit(session, "0" * 32)
