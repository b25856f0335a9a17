"""Extrapolation guardrails: ranges of a fit and warnings outside them."""

from __future__ import annotations

import numpy as np

from app.law.ranges import FAR_BEYOND, beyond_observed, from_dataset, warnings_for
from app.law.types import Dataset, Features, Ranges


def test_ranges_cover_the_data(synthetic: Dataset) -> None:
    r = from_dataset(synthetic)
    assert r.n0 == (synthetic.x.n0.min(), synthetic.x.n0.max())
    assert r.tokens == (1e7, 5e9)
    assert r.families == ("synthetic-llama",)
    assert r.methods == ("depth",)


def test_points_inside_the_ranges_carry_no_warning(synthetic: Dataset) -> None:
    r = from_dataset(synthetic)
    assert warnings_for(r, synthetic.x, family="synthetic-llama", method="depth") == []


def test_one_warning_per_variable_with_counts_and_range(synthetic: Dataset) -> None:
    r = from_dataset(synthetic)
    x = Features(
        np.array([1e9, 7e10, 1e9]),
        np.array([0.25, 0.25, 0.6]),
        np.array([2.75, 2.75, 2.75]),
        np.array([1e8, 1e8, 1e11]),
    )
    warnings = warnings_for(r, x)
    assert len(warnings) == 3
    n0_warning = next(w for w in warnings if w.startswith("n0"))
    assert "1 of 3" in n0_warning and "above" in n0_warning and "5e+08" in n0_warning
    assert any(w.startswith("rho") for w in warnings)
    assert any(w.startswith("tokens") for w in warnings)


def test_other_family_method_or_protocol_is_named(synthetic: Dataset) -> None:
    r = from_dataset(synthetic)
    x = synthetic.x.take(np.arange(2))
    warnings = warnings_for(r, x, family="qwen-2.5", method="width", protocol="other")
    assert len(warnings) == 3
    assert "qwen-2.5" in warnings[0] and "synthetic-llama" in warnings[0]
    assert "width" in warnings[1]


def test_beyond_observed_is_the_factor_past_the_last_observed_checkpoint() -> None:
    ranges = Ranges(
        n0=(1.0, 2.0),
        rho=(0.1, 0.3),
        l0=(3.0, 4.0),
        tokens=(1e6, 8e6),
        families=("f",),
        methods=("depth",),
        protocols=("p",),
    )
    assert beyond_observed(ranges, 8e6) == 1.0
    assert beyond_observed(ranges, 4e6) == 0.5
    assert beyond_observed(ranges, 8e7) == FAR_BEYOND
    empty = Ranges(
        n0=(0, 0), rho=(0, 0), l0=(0, 0), tokens=(0.0, 0.0), families=(), methods=(), protocols=()
    )
    assert beyond_observed(empty, 1.0) == float("inf")
