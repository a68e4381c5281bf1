"""Problem selection and advantages: pure functions over per-rollout rewards grouped by prompt."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class SelectionReport:
    """What selection kept, and why the others were dropped (for logs and error messages)."""

    num_prompts: int
    all_correct: int
    all_wrong: int
    mixed: int
    selected: list[int]
    mean_pass_rate: float

    def summary(self) -> str:
        return (
            f"{self.num_prompts} prompts: {self.all_correct} always solved, {self.all_wrong} never solved, "
            f"{self.mixed} mixed; kept {len(self.selected)}."
        )


def group_rewards(prompt_index: Sequence[int], rewards: Sequence[float]) -> dict[int, list[float]]:
    """Rewards per prompt, without NaN rewards (reward functions may return None)."""
    groups = defaultdict(list)
    for p, r in zip(prompt_index, rewards, strict=True):
        if not math.isnan(r):
            groups[p].append(r)
    return groups


def pass_rates(prompt_index: Sequence[int], rewards: Sequence[float]) -> dict[int, float]:
    """Mean reward per prompt, ignoring NaN rewards."""
    return {p: sum(rs) / len(rs) for p, rs in group_rewards(prompt_index, rewards).items()}


def select_problems(
    prompt_index: Sequence[int], rewards: Sequence[float], max_problems: int, success_threshold: float = 0.5
) -> SelectionReport:
    """Keep prompts with mixed success, the ``max_problems`` whose pass rate is closest to 0.5.

    A rollout counts as a success when its reward is above ``success_threshold``; ties in distance to 0.5 keep
    the lower prompt index, so selection is deterministic.
    """
    groups = group_rewards(prompt_index, rewards)
    rate = {p: sum(r > success_threshold for r in rs) / len(rs) for p, rs in groups.items()}
    mixed = [p for p, q in rate.items() if 0.0 < q < 1.0]
    mixed.sort(key=lambda p: (abs(rate[p] - 0.5), p))
    return SelectionReport(
        num_prompts=len(rate),
        all_correct=sum(q == 1.0 for q in rate.values()),
        all_wrong=sum(q == 0.0 for q in rate.values()),
        mixed=len(mixed),
        selected=sorted(mixed[:max_problems]),
        mean_pass_rate=sum(rate.values()) / len(rate) if rate else float("nan"),
    )


def group_advantages(prompt_index: Sequence[int], rewards: Sequence[float], clip: float = 2.5) -> list[float]:
    """Per-prompt z-scores ``(r - mean) / std`` (population std), clipped to ``±clip``.

    Uniform groups and NaN rewards get advantage 0 (such rows carry no contrast and are dropped downstream).
    """
    stats = {}
    for p, rs in group_rewards(prompt_index, rewards).items():
        mean = sum(rs) / len(rs)
        stats[p] = (mean, math.sqrt(sum((r - mean) ** 2 for r in rs) / len(rs)))
    out = []
    for p, r in zip(prompt_index, rewards, strict=True):
        if math.isnan(r) or p not in stats or stats[p][1] < 1e-8:
            out.append(0.0)
        else:
            mean, std = stats[p]
            out.append(max(-clip, min(clip, (r - mean) / std)))
    return out
