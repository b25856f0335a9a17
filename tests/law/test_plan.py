"""Joint planning over (method, ρ, D)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from app.law.errors import LawError
from app.law.forms import get_form
from app.law.law import FittedLaw
from app.law.plan import PlanCandidate, plan
from app.law.synthetic import SYNTHETIC_P2
from app.law.types import Ranges


def _p2(params: Mapping[str, float], refits: Sequence[Mapping[str, float]] = ()) -> FittedLaw:
    return FittedLaw(get_form("p2"), params, tuple(refits))


def _candidates() -> list[PlanCandidate]:
    return [
        PlanCandidate("depth", _p2(SYNTHETIC_P2["depth"])),
        PlanCandidate("width", _p2(SYNTHETIC_P2["width"])),
    ]


def test_plan_ranks_by_predicted_loss_and_names_the_best() -> None:
    result = plan(_candidates(), n0=1e9, l0=2.75, rho_min=0.2, token_budget=2e9)
    losses = [o.predicted_loss for o in result.options]
    assert losses == sorted(losses)
    assert result.best == result.options[0]
    # The law's loss falls with tokens and (γ < 0) rises with ρ: spend the budget, prune least.
    assert result.best is not None
    assert result.best.tokens == pytest.approx(2e9)
    assert result.best.rho == pytest.approx(0.2)
    assert result.best.n_after == pytest.approx(0.8e9)


def test_plan_respects_rho_min_budget_and_max_options() -> None:
    result = plan(_candidates(), n0=1e9, l0=2.75, rho_min=0.33, token_budget=1e9, max_options=7)
    assert len(result.options) == 7
    assert all(o.rho >= 0.33 and o.tokens <= 1e9 for o in result.options)


def test_plan_on_explicit_grids_breaks_ties_by_fewer_tokens() -> None:
    flat = {
        "N_C": 0.5,
        "D_C": 0.0,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    }
    result = plan(
        [PlanCandidate("depth", _p2(flat))],
        n0=1e9,
        l0=2.5,
        rho_min=0.25,
        token_budget=1e9,
        rho_grid=[0.25],
        token_grid=[1e8, 1e9, 1e7],
    )
    assert [o.tokens for o in result.options] == [1e7, 1e8, 1e9]


def test_plan_intervals_come_from_refits() -> None:
    depth = SYNTHETIC_P2["depth"]
    refits = [depth, {**depth, "D_C": depth["D_C"] * 1.3}, {**depth, "D_C": depth["D_C"] * 0.7}]
    result = plan(
        [PlanCandidate("depth", _p2(depth, refits))],
        n0=1e9,
        l0=2.75,
        rho_min=0.2,
        token_budget=1e9,
        level=0.8,
    )
    for o in result.options:
        assert o.lower is not None and o.upper is not None and o.lower <= o.upper


def test_plan_without_candidates_or_room_is_a_law_error() -> None:
    with pytest.raises(LawError, match="at least one"):
        plan([], n0=1e9, l0=2.5, rho_min=0.2, token_budget=1e9)
    with pytest.raises(LawError, match="rho_min"):
        plan(_candidates(), n0=1e9, l0=2.5, rho_min=0.9, token_budget=1e9, rho_grid=[0.2, 0.5])


def test_every_option_states_how_far_beyond_its_fits_observed_tokens_it_lies() -> None:
    seen = Ranges(
        n0=(5e8, 8e9), rho=(0.1, 0.4), l0=(2.0, 3.0), tokens=(1e6, 8192.0 * 1e3),
        families=("f",), methods=("depth",), protocols=(),
    )  # fmt: skip
    depth = FittedLaw(get_form("p2"), SYNTHETIC_P2["depth"], ranges=seen)
    width = _p2(SYNTHETIC_P2["width"])  # an inline law: no ranges, no factor
    result = plan(
        [PlanCandidate("depth", depth), PlanCandidate("width", width)],
        n0=1e9,
        l0=2.75,
        rho_min=0.2,
        token_budget=1e9,
        token_grid=[4.096e6, 8.192e6, 8.192e8],
        rho_grid=[0.2],
    )
    factors = {(o.method, o.tokens): o.beyond_observed for o in result.options}
    assert factors[("depth", 4.096e6)] == pytest.approx(0.5)
    assert factors[("depth", 8.192e6)] == pytest.approx(1.0)
    assert factors[("depth", 8.192e8)] == pytest.approx(100.0)
    assert all(factors[("width", t)] is None for t in (4.096e6, 8.192e6, 8.192e8))
