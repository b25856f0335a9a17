"""The fit plot is a PNG."""

from __future__ import annotations

from app.law.types import Dataset, FitResult
from app.plotting import plot_fit


def test_plot_fit_returns_png_bytes(synthetic: Dataset, fitted: FitResult) -> None:
    png = plot_fit("p2", fitted.params, synthetic, title="synthetic")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000


def test_plot_fit_draws_the_curve_form_per_run(synthetic: Dataset) -> None:
    from app.law.fitting import fit

    small = synthetic.take(synthetic.run < 2)
    result = fit("curve", small)
    assert plot_fit("curve", result.params, small)[:4] == b"\x89PNG"
