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
    success_threshold: float = 0.5
    reward_range: tuple[float, float] | None = None

    def summary(self) -> str:
        text = (
            f"{self.num_prompts} prompts: {self.all_correct} always solved, {self.all_wrong} never solved, "
            f"{self.mixed} mixed; kept {len(self.selected)} (success: reward > {self.success_threshold:.4g})."
        )
        if self.reward_range is not None and self.reward_range[0] < self.reward_range[1]:
            low, high = self.reward_range
            if not low < self.success_threshold < high:
                side = "no rollout's reward is" if high <= self.success_threshold else "every rollout's reward is"
                text += (
                    f" The rewards range from {low:.4g} to {high:.4g}, so {side} above success_threshold="
                    f"{self.success_threshold:.4g}: set success_threshold inside that range (e.g. the reward that "
                    "separates a correct answer from a wrong one), or leave it None to use the midpoint."
                )
        return text


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


def resolve_success_threshold(rewards: Sequence[float], success_threshold: float | None = None) -> float:
    """The reward a rollout must exceed to count as a success: ``success_threshold``, or, when None, halfway between
    the lowest and highest non-NaN reward (0.5 for a 0/1 verifier, 0.2 for ``0.4 × accuracy``, 0 for ±1); 0.5 when
    every reward is the same (there is nothing to split, and a pool of 1s reads as solved, of 0s as unsolved)."""
    if success_threshold is not None:
        if not math.isfinite(success_threshold):
            raise ValueError(f"success_threshold must be a finite number or None, got {success_threshold}.")
        return float(success_threshold)
    graded = [r for r in rewards if not math.isnan(r)]
    return (min(graded) + max(graded)) / 2 if graded and min(graded) < max(graded) else 0.5


def select_problems(
    prompt_index: Sequence[int],
    rewards: Sequence[float],
    max_problems: int,
    success_threshold: float | None = None,
    truncated: Sequence[bool] | None = None,
    lengths: Sequence[int] | None = None,
) -> SelectionReport:
    """Keep prompts with mixed success (0 < pass rate < 1), the ``max_problems`` whose pass rate is closest to 0.5.

    A rollout is a success when its reward is above the threshold of :func:`resolve_success_threshold`, so the
    paper's pass rate with its binary verifier, and the same selection for any other reward scale. Ties in distance
    to 0.5 (the rule: with 20 generations pass rates are multiples of 0.05) go, as in the authors' code, to the prompt
    with fewer truncated rollouts (``truncated``, one flag per rollout), then the shorter mean completion
    (``lengths``, tokens per rollout), then the lower prompt index; selection is deterministic.
    """
    groups = group_rewards(prompt_index, rewards)
    threshold = resolve_success_threshold(rewards, success_threshold)
    graded = [r for rs in groups.values() for r in rs]
    rate = {p: sum(r > threshold for r in rs) / len(rs) for p, rs in groups.items()}
    cuts, size, total_length = defaultdict(int), defaultdict(int), defaultdict(int)
    for i, p in enumerate(prompt_index):
        size[p] += 1
        cuts[p] += bool(truncated[i]) if truncated is not None else 0
        total_length[p] += lengths[i] if lengths is not None else 0
    mixed = [p for p, q in rate.items() if 0.0 < q < 1.0]
    # rounded: in floating point 9/20 sits closer to 0.5 than 11/20, which would break their tie silently
    mixed.sort(key=lambda p: (round(abs(rate[p] - 0.5), 9), cuts[p], total_length[p] / size[p], p))
    return SelectionReport(
        num_prompts=len(rate),
        all_correct=sum(q == 1.0 for q in rate.values()),
        all_wrong=sum(q == 0.0 for q in rate.values()),
        mixed=len(mixed),
        selected=sorted(mixed[:max_problems]),
        mean_pass_rate=sum(rate.values()) / len(rate) if rate else float("nan"),
        success_threshold=threshold,
        reward_range=(min(graded), max(graded)) if graded else None,
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
