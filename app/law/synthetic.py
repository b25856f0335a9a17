"""Synthetic observations from known law constants (for examples, tests and benchmarks).

Clearly synthetic: the losses are a law's predictions times log-normal noise, nothing measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.law.forms import get_form
from app.law.types import Features

# Constants of the synthetic P² law (billions convention), one set per pruning method: depth
# pruning loses more and recovers more slowly than width pruning at the same ρ.
SYNTHETIC_P2: dict[str, dict[str, float]] = {
    "depth": {
        "N_C": 0.5,
        "D_C": 0.06,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    },
    "width": {
        "N_C": 0.3,
        "D_C": 0.04,
        "E": 0.04,
        "alpha": 0.25,
        "beta": 0.45,
        "gamma": -0.9,
        "delta": 0.05,
    },
}
# Dense models of the synthetic family: parameters and their loss before pruning.
SYNTHETIC_SIZES: tuple[tuple[float, float], ...] = (
    (0.5e9, 3.0),
    (1.0e9, 2.75),
    (3.0e9, 2.45),
    (8.0e9, 2.2),
)
SYNTHETIC_RHOS: tuple[float, ...] = (0.15, 0.25, 0.35)

#: Constants of a p2-tpp law for synthetic data (tokens per parameter, no N0 factor): the shift
#: T_s (0.3 tokens per parameter) is wide enough that a power law in D alone cannot follow the
#: flat start.
SYNTHETIC_TPP: dict[str, float] = {
    "N_C": 0.0,
    "D_C": 0.08,
    "E": 0.02,
    "alpha": 0.3,
    "beta": 0.45,
    "gamma": -0.9,
    "T_s": 0.3,
}


@dataclass(frozen=True)
class SyntheticRow:
    """One observation, with the columns of the observations CSV."""

    run_id: str
    family: str
    method: str
    n0: float
    rho: float
    l0: float
    tokens: float
    loss: float
    true_loss: float
    protocol: str = "synthetic"


def make_rows(
    *,
    params_by_method: Mapping[str, Mapping[str, float]] = SYNTHETIC_P2,
    sizes: Sequence[tuple[float, float]] = SYNTHETIC_SIZES,
    rhos: Sequence[float] = SYNTHETIC_RHOS,
    n_checkpoints: int = 15,
    min_tokens: float = 1e7,
    max_tokens: float = 5e9,
    noise: float = 0.005,
    family: str = "synthetic-llama",
    seed: int = 0,
    form: str = "p2",
) -> list[SyntheticRow]:
    """Runs on a (method, size, ρ) grid, each with log-spaced checkpoints and multiplicative
    log-normal noise of relative size `noise` on the loss of `form` (P² by default) with the
    constants of `params_by_method`."""
    rng = np.random.default_rng(seed)
    law = get_form(form)
    tokens = np.geomspace(min_tokens, max_tokens, n_checkpoints)
    rows: list[SyntheticRow] = []
    for method, params in params_by_method.items():
        for n0, l0 in sizes:
            for rho in rhos:
                x = Features(
                    np.full(n_checkpoints, n0),
                    np.full(n_checkpoints, rho),
                    np.full(n_checkpoints, l0),
                    tokens.copy(),
                )
                truth = law.predict(params, x)
                observed = truth * np.exp(noise * rng.standard_normal(n_checkpoints))
                run_id = f"syn-{method}-{n0 / 1e9:g}b-rho{rho:g}"
                rows += [
                    SyntheticRow(run_id, family, method, n0, rho, l0, float(t), float(o), float(tr))
                    for t, o, tr in zip(tokens, observed, truth, strict=True)
                ]
    return rows


def selection_rows(form: str, *, family: str = "synthetic-llama") -> list[SyntheticRow]:
    """The synthetic family the nested selection is judged on: depth runs of `form` (``p2`` or
    ``p2-tpp``, with :data:`SYNTHETIC_P2`'s or :data:`SYNTHETIC_TPP`'s constants), four sizes ×
    three ρ × 12 checkpoints of 1e7–5e10 tokens, 0.5% noise."""
    params = SYNTHETIC_TPP if form == "p2-tpp" else SYNTHETIC_P2["depth"]
    return make_rows(
        params_by_method={"depth": params},
        sizes=SYNTHETIC_SIZES,
        n_checkpoints=12,
        max_tokens=5e10,
        noise=0.005,
        seed=3,
        form=form,
        family=family,
    )
