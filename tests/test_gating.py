"""Fork-token gates (``trl_reasonmaxxer.gating``): pure functions from entropy rows to boolean masks."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from trl_reasonmaxxer import gating


def distinct_rows(seed: int, lengths) -> list[list[float]]:
    rng = random.Random(seed)
    values = rng.sample(range(10**6), sum(lengths))  # distinct by construction
    rows, start = [], 0
    for n in lengths:
        rows.append([v / 1e5 for v in values[start : start + n]])
        start += n
    return rows


# ----------------------------------------------------------------------------------------------- threshold


def test_threshold_gate_is_strict():
    tau = 1.4
    entropy = [0.2, tau, math.nextafter(tau, math.inf), 3.0, math.nextafter(tau, -math.inf)]
    assert gating.threshold_gate(entropy, tau) == [False, False, True, True, False]
    assert gating.threshold_gate([], tau) == []


# ----------------------------------------------------------------------------------------------- top-k / quantile


def test_topk_gate_exact_budget_with_ties():
    entropy = [1.0, 3.0, 3.0, 2.0, 3.0]
    # three-way tie at the top: exactly k positions, the earliest tied ones first
    assert gating.topk_gate(entropy, 2) == [False, True, True, False, False]
    assert gating.topk_gate(entropy, 4) == [False, True, True, True, True]
    assert gating.topk_gate([0.5] * 6, 3) == [True, True, True, False, False, False]
    assert gating.topk_gate(entropy, 0) == [False] * 5


def test_topk_gate_k_larger_than_row_gates_everything():
    assert gating.topk_gate([0.1, 0.3], 10) == [True, True]
    assert gating.topk_gate([], 3) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        gating.topk_gate([1.0], -1)


@pytest.mark.parametrize("fraction", [0.03, 0.07, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0])
def test_quantile_gate_hits_budget_exactly(fraction):
    """The budget is ceil(fraction * n) computed exactly (0.07 * 100 is 7 positions, not 8)."""
    for n in (1, 2, 5, 10, 20, 30, 33, 50, 100, 101):
        (row,) = distinct_rows(n, [n])
        mask = gating.quantile_gate(row, fraction)
        budget = math.ceil(Fraction(str(fraction)) * n)
        assert sum(mask) == budget, f"fraction={fraction}, n={n}: gated {sum(mask)}, budget {budget}"
        gated = [h for h, g in zip(row, mask) if g]
        rest = [h for h, g in zip(row, mask) if not g]
        assert not rest or min(gated) > max(rest)  # the budget goes to the highest entropies


def test_quantile_gate_ties_and_bad_fraction():
    assert gating.quantile_gate([2.0] * 8, 0.25) == [True, True] + [False] * 6
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            gating.quantile_gate([1.0, 2.0], bad)


# ----------------------------------------------------------------------------------------------- random control


def test_random_gate_exact_count_and_seeded():
    for count in (0, 1, 7, 20):
        mask = gating.random_gate(20, count, random.Random(3))
        assert len(mask) == 20 and sum(mask) == count
    a = gating.random_gate(50, 5, random.Random(123))
    b = gating.random_gate(50, 5, random.Random(123))
    assert a == b
    others = {tuple(gating.random_gate(50, 5, random.Random(seed))) for seed in range(5)}
    assert len(others) > 1  # the seed matters
    with pytest.raises(ValueError, match="count must be in"):
        gating.random_gate(3, 4, random.Random(0))


# ----------------------------------------------------------------------------------------------- calibration


def test_calibrate_threshold_hits_target_fraction_on_distinct_values():
    rng = random.Random(0)
    values = [rng.random() * 5 for _ in range(1000)]
    assert len(set(values)) == 1000
    tau = gating.calibrate_threshold([values], 0.03)
    assert sum(gating.threshold_gate(values, tau)) == 30
    # the same values split into rollouts of uneven length: the pool-wide count is unchanged
    rows = [values[:7], values[7:400], values[400:401], values[401:]]
    tau_rows = gating.calibrate_threshold(rows, 0.03)
    masks = [gating.threshold_gate(r, tau_rows) for r in rows]
    assert sum(map(sum, masks)) == 30
    assert gating.gated_fraction(masks) == pytest.approx(0.03)
    # the 30 gated tokens are the 30 highest
    gated = sorted((h for r, m in zip(rows, masks) for h, g in zip(r, m) if g), reverse=True)
    assert gated == sorted(values, reverse=True)[:30]


@pytest.mark.parametrize("fraction,expected", [(0.001, 1), (0.5, 500), (0.999, 999), (1.0, 1000)])
def test_calibrate_threshold_extremes(fraction, expected):
    rows = distinct_rows(1, [600, 400])
    tau = gating.calibrate_threshold(rows, fraction)
    assert sum(sum(gating.threshold_gate(r, tau)) for r in rows) == expected


def test_calibrate_threshold_includes_the_target_token_when_it_is_tied():
    """Docstring contract: τ is nudged below the round(fraction·N)-th highest entropy, so that token is gated;
    ties may overshoot, never undershoot. Ties are common in practice: every rollout of a prompt shares its
    first-token entropy. Here the 3rd-highest entropy (9.0) is shared by 5 tokens."""
    rng = random.Random(0)
    row = [rng.random() for _ in range(95)] + [9.0] * 5
    fraction = 3 / 100
    tau = gating.calibrate_threshold([row], fraction)
    gated = sum(gating.threshold_gate(row, tau))
    assert 3 <= gated <= 5, f"τ={tau} gates {gated} tokens; the 3 highest (all 9.0) must be included"


def test_calibrate_threshold_errors():
    with pytest.raises(ValueError, match="no completion tokens"):
        gating.calibrate_threshold([[], []], 0.1)
    with pytest.raises(ValueError, match="fraction must be in"):
        gating.calibrate_threshold([[1.0]], 0.0)


# ----------------------------------------------------------------------------------------------- build_fork_masks


def test_build_fork_masks_pool_scope_calibrates_or_uses_threshold():
    rows = distinct_rows(2, [30, 50, 20])
    masks, tau = gating.build_fork_masks(rows, fraction=0.1)
    assert tau == gating.calibrate_threshold(rows, 0.1)
    assert sum(map(sum, masks)) == 10
    masks, tau = gating.build_fork_masks(rows, threshold=5.0, fraction=0.1)
    assert tau == 5.0
    assert masks == [gating.threshold_gate(r, 5.0) for r in rows]


def test_build_fork_masks_rollout_scope():
    rows = distinct_rows(3, [10, 3, 40])
    masks, tau = gating.build_fork_masks(rows, scope="rollout", fraction=0.2)
    assert tau is None
    assert [sum(m) for m in masks] == [2, 1, 8]
    masks, _ = gating.build_fork_masks(rows, scope="rollout", topk=4)
    assert [sum(m) for m in masks] == [4, 3, 4]


@pytest.mark.parametrize(
    "kwargs", [dict(scope="pool", fraction=0.1), dict(scope="pool", threshold=7.0), dict(scope="rollout", topk=3)]
)
def test_random_control_matches_entropy_gate_per_rollout(kwargs):
    rows = distinct_rows(4, [12, 40, 5, 33, 60])
    entropy_masks, entropy_tau = gating.build_fork_masks(rows, gate="entropy", **kwargs)
    random_masks, random_tau = gating.build_fork_masks(rows, gate="random", seed=11, **kwargs)
    assert random_tau == entropy_tau
    assert [len(m) for m in random_masks] == [len(r) for r in rows]
    assert [sum(m) for m in random_masks] == [sum(m) for m in entropy_masks]
    assert random_masks != entropy_masks  # a control, not a copy of the entropy gate
    again, _ = gating.build_fork_masks(rows, gate="random", seed=11, **kwargs)
    assert again == random_masks
    other, _ = gating.build_fork_masks(rows, gate="random", seed=12, **kwargs)
    assert other != random_masks
    assert [sum(m) for m in other] == [sum(m) for m in entropy_masks]


def test_build_fork_masks_all_gates_every_completion_token():
    rows = [[0.0, 0.0], [5.0], [1.0, 2.0, 3.0]]
    masks, tau = gating.build_fork_masks(rows, gate="all", threshold=1e9)
    assert masks == [[True, True], [True], [True, True, True]]
    assert tau is None
    assert gating.gated_fraction(masks) == 1.0


def test_build_fork_masks_no_token_error_names_the_fix():
    rows = distinct_rows(5, [10, 10])
    with pytest.raises(ValueError) as err:
        gating.build_fork_masks(rows, threshold=1e9)
    message = str(err.value)
    assert "selected no token in 2 rollouts" in message
    assert "fork_threshold" in message and "fork_fraction" in message
    with pytest.raises(ValueError, match="fork_threshold"):
        gating.build_fork_masks(rows, gate="random", threshold=1e9)


def test_build_fork_masks_rejects_unknown_gate_or_scope():
    rows = distinct_rows(6, [5])
    with pytest.raises(ValueError, match="gate must be"):
        gating.build_fork_masks(rows, gate="oracle")
    with pytest.raises(ValueError, match="scope must be"):
        gating.build_fork_masks(rows, scope="batch")


def test_gated_fraction():
    assert gating.gated_fraction([[True, False], [False, False, True, True]]) == pytest.approx(0.5)
    assert gating.gated_fraction([]) == 0.0
