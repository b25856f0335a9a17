"""Extrapolation guardrails: the data a fit saw, and warnings for predictions outside it."""

from __future__ import annotations

import numpy as np

from app.law.types import Dataset, Features, Ranges

# Relative slack so that a point equal to a bound up to float noise is not "outside".
_RTOL = 1e-9
_LABELS = {
    "n0": "n0 (parameters before pruning)",
    "rho": "rho (pruning rate)",
    "l0": "l0 (dense loss)",
    "tokens": "tokens",
}


def from_dataset(data: Dataset) -> Ranges:
    """The ranges of N0, ρ, L0 and D, and the families, methods and protocols of a dataset."""
    x = data.x

    def span(values: np.ndarray) -> tuple[float, float]:
        return (float(np.min(values)), float(np.max(values))) if len(values) else (0.0, 0.0)

    return Ranges(
        n0=span(x.n0),
        rho=span(x.rho),
        l0=span(x.l0),
        tokens=span(x.tokens),
        families=tuple(sorted(set(data.family))),
        methods=tuple(sorted(set(data.method))),
        protocols=tuple(sorted(set(data.protocol))),
    )


def _mismatch(kind: str, value: str | None, seen: tuple[str, ...]) -> list[str]:
    if value is None or not seen or value in seen:
        return []
    return [f"{kind} {value!r} was not in the fit's data (fitted on: {', '.join(seen)})"]


def warnings_for(
    ranges: Ranges,
    x: Features,
    *,
    family: str | None = None,
    method: str | None = None,
    protocol: str | None = None,
) -> list[str]:
    """One readable warning per variable with points outside the fitted range, and one per
    family / method / protocol the fit did not see."""
    out: list[str] = []
    n = len(x)
    for name in ("n0", "rho", "l0", "tokens"):
        lo, hi = getattr(ranges, name)
        values = getattr(x, name)
        slack_lo = abs(lo) * _RTOL
        slack_hi = abs(hi) * _RTOL
        below = int(np.count_nonzero(values < lo - slack_lo))
        above = int(np.count_nonzero(values > hi + slack_hi))
        if below or above:
            where = []
            if below:
                where.append(f"{below} below")
            if above:
                where.append(f"{above} above")
            out.append(
                f"{_LABELS[name]}: {below + above} of {n} point(s) outside the fitted range "
                f"[{lo:.4g}, {hi:.4g}] ({', '.join(where)}); the law extrapolates there"
            )
    out += _mismatch("family", family, ranges.families)
    out += _mismatch("method", method, ranges.methods)
    out += _mismatch("protocol", protocol, ranges.protocols)
    return out


#: Beyond this many times the most tokens a fit observed, an answer is an extrapolation: the
#: planner shows it as one, not as a plain number.
FAR_BEYOND = 10.0


def beyond_observed(ranges: Ranges, tokens: float) -> float:
    """How far ``tokens`` lies beyond the most post-training tokens the fit observed, as a factor
    (1.0 at the last observed checkpoint, below 1 inside the data, inf for a fit that observed
    none)."""
    most = ranges.tokens[1]
    return float(tokens / most) if most > 0 else float("inf")
