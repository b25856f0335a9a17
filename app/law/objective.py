"""The fit objective shared by fitting, metrics and the start grids (docs/law.md §4).

Summed Huber (δ = 1e-3) on log-loss residuals. Summing, not averaging, keeps the objective's scale
proportional to the data, which is what stops L-BFGS-B from declaring convergence too early.
"""

from __future__ import annotations

import numpy as np

from app.law.types import FloatArray

HUBER_DELTA = 1e-3


def huber(residual: FloatArray, delta: float = HUBER_DELTA) -> FloatArray:
    """Huber_δ(r): r²/2 for |r| ≤ δ, δ(|r| − δ/2) beyond (elementwise)."""
    a = np.abs(residual)
    return np.where(a <= delta, 0.5 * residual * residual, delta * (a - 0.5 * delta))


def huber_slope(residual: FloatArray, delta: float = HUBER_DELTA) -> FloatArray:
    """dHuber_δ/dr = clip(r, −δ, δ)."""
    return np.clip(residual, -delta, delta)
