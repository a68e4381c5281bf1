"""Figures for every report (evaluation, comparison, analysis, benchmarks): matplotlib's Agg canvas, so no display is
needed and pyplot's global state is left alone."""

from __future__ import annotations

import os


def new_figure(width: float = 6.0, height: float = 4.0, ncols: int = 1, sharex: bool = False, sharey: bool = False):
    """``(figure, axes)`` on a ``width`` × ``height`` inch figure drawn by the Agg canvas: one axes, or with ``ncols`` >
    1 a row of that many (an array; ``sharex``/``sharey`` give them one scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, sharex=sharex, sharey=sharey)


def save_figure(fig, path: str) -> str:
    """Lay ``fig`` out and write it to ``path`` (150 dpi; the format follows the suffix); returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
