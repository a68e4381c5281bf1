"""Figures for every report (evaluation, comparison, analysis, benchmarks): matplotlib's Agg canvas, so no display is
needed and pyplot's global state is left alone."""

from __future__ import annotations

import os


def new_figure(width: float = 6.0, height: float = 4.0):
    """``(figure, axes)``: one axes on a ``width`` × ``height`` inch figure drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig, path: str) -> str:
    """Lay ``fig`` out and write it to ``path`` (150 dpi; the format follows the suffix); returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
