"""A model's parameter count and the weights 2:4 sparsity can zero, from its config.

The rules live in ``app.core.pruning`` (the plan every method shares); this is the summary the
memory model and its tests read (docs/scaling.md): N0 and the 2:4-zeroable weights of a
Llama-shaped config, or None for one the plan cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.pruning import ModelShape, UnsupportedConfigError, eligible_2of4


@dataclass(frozen=True)
class Capacity:
    """A model's parameter count and the weights 2:4 sparsity can zero."""

    n0: int
    zeroable_2of4: int

    @property
    def max_rho_2of4(self) -> float:
        """The largest ρ a 2:4 pattern on every eligible projection reaches."""
        return self.zeroable_2of4 / self.n0


def capacity_from_config(config: Mapping[str, Any]) -> Capacity | None:
    """The model's N0 and 2:4-zeroable weights from its HF config, or None when unknown.

    Counted the way ``workers.ml.models.count_parameters`` counts the loaded model (a tied head
    once); a test compares the two on every family the plan reads.
    """
    try:
        shape = ModelShape.from_config(config)
    except UnsupportedConfigError:
        return None
    zeroable = sum(
        out * inp // 2 for out, inp in shape.projections().values() if eligible_2of4(inp)
    )
    return Capacity(n0=shape.parameter_count(), zeroable_2of4=shape.layers * zeroable)
