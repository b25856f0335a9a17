"""Plots of fitted laws (matplotlib, Agg backend: no display, safe in a web worker).

Kept outside `app.law` so that the law engine stays numpy + scipy only.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from app.law.forms import get_form
from app.law.types import Dataset, Features

# Points per fitted curve: smooth on a log axis, cheap to draw.
_CURVE_POINTS = 120


def _count(n0: float) -> str:
    if n0 >= 1e9:
        return f"{n0 / 1e9:.3g}B"
    if n0 >= 1e6:
        return f"{n0 / 1e6:.3g}M"
    return f"{n0:.3g}"


def _run_label(data: Dataset, run: int, first: int) -> str:
    x = data.x
    label = f"n0={_count(float(x.n0[first]))}, ρ={float(x.rho[first]):.2f}"
    if data.method:
        label += f", {data.method[first]}"
    return f"{label} ({data.run_ids[run]})"


def plot_fit(
    form: str,
    params: Mapping[str, float],
    data: Dataset,
    *,
    title: str | None = None,
) -> bytes:
    """A PNG of the observed losses (points) and the fitted law (lines) over tokens, per run.

    One colour per run, tokens on a log axis, a legend naming each run by n0, ρ and method.
    """
    law = get_form(form)
    runs = [int(r) for r in np.unique(data.run)]
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20" if len(runs) <= 20 else "turbo")
    ncol = 1 if len(runs) <= 16 else 2
    # Each extra legend column gets its own width so the axes keep theirs.
    fig = Figure(figsize=(11 + 3.5 * (ncol - 1), 6.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for k, r in enumerate(runs):
        idx = np.flatnonzero(data.run == r)
        idx = idx[np.argsort(data.x.tokens[idx])]
        colour = cmap(k / max(len(runs) - 1, 1)) if len(runs) > 20 else cmap(k)
        ax.scatter(data.x.tokens[idx], data.loss[idx], s=18, color=colour, zorder=3)
        lo, hi = float(data.x.tokens[idx[0]]), float(data.x.tokens[idx[-1]])
        grid = np.geomspace(lo / 1.5, hi * 1.5, _CURVE_POINTS)
        first = int(idx[0])
        x = Features(
            np.full(grid.size, data.x.n0[first]),
            np.full(grid.size, data.x.rho[first]),
            np.full(grid.size, data.x.l0[first]),
            grid,
        )
        curve_data = Dataset(
            x=x,
            loss=np.ones(grid.size),
            run=np.full(grid.size, r, dtype=np.int64),
            run_ids=data.run_ids,
        )
        ax.plot(
            grid,
            law.predict_data(params, curve_data),
            color=colour,
            lw=1.6,
            label=_run_label(data, r, first),
        )
    ax.set_xscale("log")
    ax.set_xlabel("post-training tokens (D)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or f"{form} law fitted to {len(data)} observations of {len(runs)} runs")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        ncol=ncol,
        title="points: observed · lines: law",
        title_fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
