"""τ calibration: the share of completion tokens an entropy threshold gates, over a range of thresholds."""

from __future__ import annotations

from collections.abc import Sequence

from ..gating import calibrate_threshold, gated_fraction, threshold_gate


def tau_curve(entropies: Sequence[Sequence[float]], taus: Sequence[float]) -> list[float]:
    """Share of all completion tokens with entropy strictly above each τ (the paper's ``H_t > τ`` gate)."""
    return [gated_fraction([threshold_gate(row, tau) for row in entropies]) for tau in taus]


def tau_grid(entropies: Sequence[Sequence[float]], points: int = 61) -> list[float]:
    """Evenly spaced thresholds from 0 to just above the largest entropy, so the curve runs from ~1 to 0."""
    top = max((h for row in entropies for h in row), default=0.0)
    return [top * 1.01 * i / (points - 1) for i in range(points)]


def calibration_report(
    entropies: Sequence[Sequence[float]], target_fraction: float, taus: Sequence[float] = (), points: int = 61
) -> dict:
    """The τ curve and the τ whose gated share is closest to ``target_fraction`` (see
    :func:`~trl_reasonmaxxer.gating.calibrate_threshold`), plus the share gated at each τ of ``taus``."""
    grid = tau_grid(entropies, points)
    tau = calibrate_threshold(entropies, target_fraction)
    return {
        "tokens": sum(len(row) for row in entropies),
        "target_fraction": target_fraction,
        "tau_for_target": tau,
        "achieved_fraction": tau_curve(entropies, [tau])[0],
        "fraction_at": {f"{t:g}": f for t, f in zip(taus, tau_curve(entropies, taus))},
        "curve": {"tau": grid, "fraction": tau_curve(entropies, grid)},
    }
