"""Fork-token gates: pure functions from per-token base entropies to boolean masks.

An entropy row holds, for each completion token j, the base model's entropy (nats) of the distribution that
predicted token j. Rows cover completion tokens only, so prompt and padding positions can never be gated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


Mask = list[bool]


def threshold_gate(entropy: Sequence[float], threshold: float) -> Mask:
    """Positions whose entropy is strictly above ``threshold`` (the paper's ``H_t > τ``)."""
    return [h > threshold for h in entropy]


def topk_gate(entropy: Sequence[float], k: int) -> Mask:
    """Exactly ``min(k, len(entropy))`` highest-entropy positions (ties go to the earlier position)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    order = sorted(range(len(entropy)), key=lambda i: (-entropy[i], i))[:k]
    chosen = set(order)
    return [i in chosen for i in range(len(entropy))]


def quantile_gate(entropy: Sequence[float], fraction: float) -> Mask:
    """The top ``ceil(fraction · n)`` positions of one rollout by entropy."""
    _check_fraction(fraction)
    # round first: 0.07 * 100 is 7.000000000000001 in floating point, which ceil would turn into 8
    return topk_gate(entropy, math.ceil(round(fraction * len(entropy), 9)))


def random_gate(length: int, count: int, rng: random.Random) -> Mask:
    """``count`` positions chosen uniformly: the budget-matched control for an entropy gate."""
    if not 0 <= count <= length:
        raise ValueError(f"count must be in [0, {length}], got {count}.")
    chosen = set(rng.sample(range(length), count))
    return [i in chosen for i in range(length)]


def calibrate_threshold(entropies: Sequence[Sequence[float]], fraction: float) -> float:
    """The threshold τ for which the share of all tokens with ``H > τ`` is closest to ``fraction``.

    τ is the entropy of the ``round(fraction · N)``-th highest token, nudged down to the next distinct value below
    it so that token is included; with ties the achieved fraction may overshoot, never by more than the tie.
    """
    _check_fraction(fraction)
    values = sorted((h for row in entropies for h in row), reverse=True)
    if not values:
        raise ValueError("Cannot calibrate a fork threshold on a pool with no completion tokens.")
    count = max(1, round(fraction * len(values)))
    target = values[count - 1]
    # the largest value strictly below the count-th highest: every token tied with it is gated too
    below = next((v for v in values[count:] if v < target), None)
    return below if below is not None else math.nextafter(values[-1], -math.inf)


def gated_fraction(masks: Sequence[Mask]) -> float:
    """Share of positions gated over a set of rows."""
    total = sum(len(m) for m in masks)
    return sum(sum(m) for m in masks) / total if total else 0.0


def build_fork_masks(
    entropies: Sequence[Sequence[float]],
    gate: str = "entropy",
    threshold: float | None = None,
    fraction: float = 0.03,
    scope: str = "pool",
    topk: int | None = None,
    seed: int = 0,
) -> tuple[list[Mask], float | None]:
    """Fork masks for every rollout of a pool, and the threshold used (None for per-rollout rules).

    ``gate="random"`` gates, in each rollout, as many positions as the entropy gate with the same settings would,
    chosen uniformly (seeded); ``gate="all"`` gates every completion token.
    """
    if gate == "all":
        return [[True] * len(row) for row in entropies], None
    if scope == "rollout":
        tau = None
        masks = [topk_gate(row, topk) if topk is not None else quantile_gate(row, fraction) for row in entropies]
    elif scope == "pool":
        tau = threshold if threshold is not None else calibrate_threshold(entropies, fraction)
        masks = [threshold_gate(row, tau) for row in entropies]
    else:
        raise ValueError(f"scope must be 'pool' or 'rollout', got {scope!r}.")
    if gate == "random":
        rng = random.Random(seed)
        masks = [random_gate(len(m), sum(m), rng) for m in masks]
    elif gate != "entropy":
        raise ValueError(f"gate must be 'entropy', 'random' or 'all', got {gate!r}.")
    if not any(any(m) for m in masks):
        rule = f"threshold τ={tau:.3f} nats" if tau is not None else "per-rollout rule"
        raise ValueError(
            f"The fork gate selected no token in {len(masks)} rollouts ({rule}). Lower `fork_threshold`, raise "
            "`fork_fraction`, or leave `fork_threshold=None` to calibrate it on the pool."
        )
    return masks, tau


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
