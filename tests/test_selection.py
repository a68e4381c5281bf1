"""Problem selection and advantages (``trl_reasonmaxxer.selection``)."""

from __future__ import annotations

import math
import statistics

import pytest

from trl_reasonmaxxer import selection


NAN = float("nan")


def flatten(groups: dict[int, list[float]]) -> tuple[list[int], list[float]]:
    index, rewards = [], []
    for p, rs in groups.items():
        index += [p] * len(rs)
        rewards += rs
    return index, rewards


GROUPS = {
    0: [1.0, 1.0, 1.0, 1.0],  # always solved
    1: [0.0, 0.0, 0.0, 0.0],  # never solved
    2: [1.0, 0.0, 0.0, 0.0],  # p = 0.25
    3: [1.0, 1.0, 0.0, 0.0],  # p = 0.5
    4: [1.0, 1.0, 1.0, 0.0],  # p = 0.75
    5: [0.0, 1.0],  # p = 0.5
    6: [1.0] * 9 + [0.0],  # p = 0.9
}


def test_only_mixed_groups_are_kept():
    report = selection.select_problems(*flatten(GROUPS), max_problems=100)
    assert report.selected == [2, 3, 4, 5, 6]
    assert 0 not in report.selected and 1 not in report.selected


@pytest.mark.parametrize(
    "max_problems,expected",
    [(1, [3]), (2, [3, 5]), (3, [2, 3, 5]), (4, [2, 3, 4, 5]), (5, [2, 3, 4, 5, 6])],
)
def test_closest_to_half_first_and_max_problems(max_problems, expected):
    """|p - 0.5| ranks prompts: 3 and 5 (0.5), then 2 and 4 (0.25 away; the lower index wins the tie), then 6."""
    report = selection.select_problems(*flatten(GROUPS), max_problems=max_problems)
    assert report.selected == expected


def test_selection_ignores_input_order():
    index, rewards = flatten(GROUPS)
    order = list(reversed(range(len(index))))
    report = selection.select_problems([index[i] for i in order], [rewards[i] for i in order], max_problems=3)
    assert report.selected == [2, 3, 5]


def test_success_threshold_for_graded_rewards():
    index = [0, 0, 1, 1]
    rewards = [0.7, 0.2, 0.4, 0.3]  # prompt 0: one success above 0.5; prompt 1: none
    report = selection.select_problems(index, rewards, max_problems=5)
    assert report.selected == [0] and report.all_wrong == 1
    report = selection.select_problems(index, rewards, max_problems=5, success_threshold=0.35)
    assert report.selected == [0, 1]


def test_selection_report_counts_and_summary():
    report = selection.select_problems(*flatten(GROUPS), max_problems=2)
    assert (report.num_prompts, report.all_correct, report.all_wrong, report.mixed) == (7, 1, 1, 5)
    rates = [1.0, 0.0, 0.25, 0.5, 0.75, 0.5, 0.9]
    assert report.mean_pass_rate == pytest.approx(sum(rates) / len(rates))
    summary = report.summary()
    assert "7 prompts" in summary and "1 always solved" in summary and "1 never solved" in summary
    assert "5 mixed" in summary and "kept 2" in summary


def test_nan_rewards_are_ignored_by_selection_and_pass_rates():
    index = [0, 0, 0, 1, 1, 2, 2, 2]
    rewards = [1.0, NAN, NAN, NAN, NAN, 1.0, 0.0, NAN]
    report = selection.select_problems(index, rewards, max_problems=5)
    assert report.num_prompts == 2  # prompt 1 has no valid reward at all
    assert report.all_correct == 1 and report.selected == [2]
    assert selection.pass_rates(index, rewards) == {0: 1.0, 2: 0.5}


def test_advantages_are_population_z_scores():
    index, rewards = flatten({3: [1.0, 1.0, 0.0, 0.0], 2: [1.0, 0.0, 0.0, 0.0]})
    adv = selection.group_advantages(index, rewards)
    # p = 0.5: +-1 ; p = 0.25: +sqrt(3), -1/sqrt(3)  (population std, not the sample std)
    assert adv[:4] == pytest.approx([1.0, 1.0, -1.0, -1.0])
    assert adv[4:] == pytest.approx([math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])
    graded = [0.9, 0.1, 0.5, 0.3]
    mean, std = statistics.fmean(graded), statistics.pstdev(graded)
    assert selection.group_advantages([7] * 4, graded) == pytest.approx([(r - mean) / std for r in graded])


def test_advantages_are_clipped_at_2_5():
    rewards = [1.0] + [0.0] * 19  # 1 success of 20: z = +4.36 for it, -0.229 for the failures
    z = (1 - 0.05) / math.sqrt(0.05 * 0.95)
    assert z == pytest.approx(4.3589, abs=1e-4)
    adv = selection.group_advantages([0] * 20, rewards)
    assert adv[0] == 2.5
    assert adv[1:] == pytest.approx([-0.05 / math.sqrt(0.05 * 0.95)] * 19)
    # symmetric: 19 of 20 clips the failure at -2.5
    adv = selection.group_advantages([0] * 20, [0.0] + [1.0] * 19)
    assert adv[0] == -2.5
    assert selection.group_advantages([0] * 20, rewards, clip=1.0)[0] == 1.0


def test_uniform_groups_and_nan_rewards_get_zero_advantage():
    index = [0, 0, 0, 1, 1, 1, 2, 2]
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, NAN]
    assert selection.group_advantages(index, rewards) == [0.0] * 8
    # NaN rows are excluded from the group statistics and get 0 themselves
    adv = selection.group_advantages([0, 0, 0], [1.0, NAN, 0.0])
    assert adv == pytest.approx([1.0, 0.0, -1.0])
