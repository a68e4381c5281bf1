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


# ------------------------------------------------------------------------ success threshold (audit F6)


@pytest.mark.parametrize(
    "rewards",
    [
        [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # a 0/1 verifier
        [0.4, 0.0, 0.4, 0.0, 0.4, 0.0, 0.0, 0.0],  # reward_weights=[0.4]: 0.4 × accuracy
        [0.3, 0.0, 0.3, 0.0, 0.3, 0.0, 0.0, 0.0],  # graded {0, 0.3}
        [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0, -1.0],  # ±1
        [5.0, 2.0, 5.0, 2.0, 5.0, 2.0, 2.0, 2.0],  # shifted and scaled
    ],
)
def test_selection_is_the_same_for_any_reward_scale(rewards):
    """The default threshold sits halfway between the pool's lowest and highest reward: the paper's pass rate for
    a 0/1 verifier, and the same selection for any affine rescaling (the old fixed 0.5 kept nothing for 0.4·acc)."""
    index = [0] * 4 + [1] * 4
    report = selection.select_problems(index, rewards, 50)
    assert report.selected == [0, 1]
    assert report.success_threshold == pytest.approx((min(rewards) + max(rewards)) / 2)
    assert selection.pass_rates(index, [float(r > report.success_threshold) for r in rewards]) == {0: 0.5, 1: 0.25}


def test_an_explicit_threshold_outside_the_rewards_is_named_in_the_summary():
    index, rewards = [0] * 4 + [1] * 4, [0.4, 0.0, 0.4, 0.0] * 2
    report = selection.select_problems(index, rewards, 50, success_threshold=0.5)
    assert report.selected == [] and report.all_wrong == 2
    summary = report.summary()
    assert "rewards range from 0 to 0.4, so no rollout's reward is above success_threshold=0.5" in summary
    assert "set success_threshold inside that range" in summary
    report = selection.select_problems(index, rewards, 50, success_threshold=-1.0)
    assert report.all_correct == 2 and "every rollout's reward is above success_threshold=-1" in report.summary()
    # a threshold inside the range, or a uniform pool (nothing to split), adds no hint
    assert "range" not in selection.select_problems(index, rewards, 50, success_threshold=0.2).summary()
    assert "range" not in selection.select_problems(index, [1.0] * 8, 50).summary()
    with pytest.raises(ValueError, match="finite"):
        selection.select_problems(index, rewards, 50, success_threshold=float("nan"))


def test_config_validates_success_threshold(tmp_path):
    from trl_reasonmaxxer import ReasonMaxxerConfig

    assert ReasonMaxxerConfig(output_dir=str(tmp_path), use_cpu=True).success_threshold is None
    with pytest.raises(ValueError, match="success_threshold must be a finite number"):
        ReasonMaxxerConfig(output_dir=str(tmp_path), use_cpu=True, success_threshold=float("inf"))


def test_the_trainer_selects_scaled_rewards_and_honours_success_threshold(tmp_path):
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import save_tiny_model

    from .helpers import make_pool, tiny_config

    model = save_tiny_model(str(tmp_path / "model"))
    rollouts = [(0.4, [0.5, 2.0]), (0.0, [2.0, 0.5]), (0.4, [0.5, 2.0]), (0.0, [2.0, 0.5])]
    pool = make_pool({0: rollouts, 1: rollouts}, prompt_len=2, vocab=39)
    args = tiny_config(tmp_path / "run", fork_threshold=1.0)
    pairs = ReasonMaxxerTrainer(model, args=args, rollout_dataset=pool).prepare_training_data()
    assert sorted(set(pairs["prompt_index"])) == [0, 1]
    args = tiny_config(tmp_path / "run2", fork_threshold=1.0, success_threshold=0.5)
    with pytest.raises(ValueError, match="No prompt has mixed success.*success_threshold=0.5"):
        ReasonMaxxerTrainer(model, args=args, rollout_dataset=pool).prepare_training_data()


# ------------------------------------------------------------------------------ tie-breaking (audit F7)


def test_ties_go_to_fewer_truncations_then_shorter_rollouts_then_the_lower_index():
    """Four prompts at p = 0.5: the authors' order (fewer truncated rollouts, shorter mean completion, index), not
    dataset order."""
    index = [p for p in range(4) for _ in range(20)]
    rewards = ([1.0] * 10 + [0.0] * 10) * 4
    truncated = [False] * 80
    truncated[0] = truncated[1] = True  # prompt 0: two truncated rollouts
    truncated[20] = True  # prompt 1: one
    lengths = [100] * 80
    lengths[40:60] = [120] * 20  # prompt 2: longer than prompt 3
    ranked = [
        selection.select_problems(index, rewards, k, truncated=truncated, lengths=lengths).selected for k in (1, 2, 3)
    ]
    assert ranked == [[3], [2, 3], [1, 2, 3]]
    # without the rollout details: the prompt index
    assert selection.select_problems(index, rewards, 2).selected == [0, 1]


def test_9_of_20_and_11_of_20_tie_despite_floating_point():
    """|0.45 - 0.5| < |0.55 - 0.5| in floating point; both are 0.05 from 0.5, so the index decides."""
    index = [0] * 20 + [1] * 20
    rewards = [1.0] * 11 + [0.0] * 9 + [1.0] * 9 + [0.0] * 11
    assert selection.select_problems(index, rewards, 1).selected == [0]


def test_a_uniform_pool_keeps_the_0_1_reading():
    """Nothing to split: 0.5, so a pool of 1s is always solved and one of 0s never solved (as with a verifier)."""
    assert selection.select_problems([0, 0, 1, 1], [1.0] * 4, 5).all_correct == 2
    assert selection.select_problems([0, 0, 1, 1], [0.0] * 4, 5).all_wrong == 2
