"""The comparison's arithmetic without a model: splits, the headline ratio on synthetic curves, seed pooling and the
table."""

import copy
import math
import os

import pytest

from trl_reasonmaxxer.benchmarking.report import (
    REQUIRED_PAIRS,
    build_evidence,
    eval_generated_tokens,
    first_crossing,
    format_table,
    grpo_step_tokens,
    grpo_steps_for_budget,
    headline_ratio,
    mean_curve,
    mean_ledger,
    paired_rows,
    plot_paired,
    pooled_metric,
    split_indices,
)

from . import synthetic


def test_split_indices_are_disjoint_sized_and_seeded():
    parts = split_indices(20, {"pool": 8, "validation": 4, "test": 5}, seed=3)
    assert [len(p) for p in parts.values()] == [8, 4, 5]
    flat = [i for p in parts.values() for i in p]
    assert len(set(flat)) == 17 and all(0 <= i < 20 for i in flat)
    assert parts == split_indices(20, {"pool": 8, "validation": 4, "test": 5}, seed=3)
    assert parts != split_indices(20, {"pool": 8, "validation": 4, "test": 5}, seed=4)
    with pytest.raises(ValueError, match="Cannot split 5 problems"):
        split_indices(5, {"pool": 4, "test": 2})
    with pytest.raises(ValueError, match="at least 1 problem"):
        split_indices(5, {"pool": 4, "test": 0})


def test_a_part_drawn_from_the_end_stays_put_whatever_the_front_draws():
    sizes = {"pool": 8, "validation": 4}
    plain = split_indices(20, sizes, seed=3)
    parts = split_indices(20, sizes, seed=3, tail={"diagnosis": 5})
    assert {k: parts[k] for k in sizes} == plain and len(parts["diagnosis"]) == 5
    assert not set(parts["diagnosis"]) & {i for k in sizes for i in parts[k]}
    larger = split_indices(20, sizes | {"extra_pool": 3}, seed=3, tail={"diagnosis": 5})
    assert larger["diagnosis"] == parts["diagnosis"] and not set(larger["diagnosis"]) & set(larger["extra_pool"])
    # the whole permutation: front and tail meet exactly
    assert sorted(i for p in split_indices(6, {"a": 4}, seed=0, tail={"b": 2}).values() for i in p) == list(range(6))
    with pytest.raises(ValueError, match="Cannot split 20 problems"):
        split_indices(20, sizes, seed=3, tail={"diagnosis": 9})
    with pytest.raises(ValueError, match="a name of its own"):
        split_indices(20, sizes, seed=3, tail={"pool": 2})


CURVE = [(0.0, 0.0), (10.0, 0.05), (20.0, 0.15), (30.0, 0.10), (40.0, 0.30)]


def test_first_crossing_interpolates_between_the_bracketing_checkpoints():
    assert first_crossing(CURVE, 0.10) == pytest.approx(10.0 + (0.10 - 0.05) / (0.15 - 0.05) * 10.0)
    assert first_crossing(CURVE, 0.10, interpolate=False) == 20.0
    assert first_crossing(CURVE, 0.15) == pytest.approx(20.0)  # exactly on a checkpoint
    assert first_crossing(CURVE, 0.25) == pytest.approx(30.0 + 0.15 / 0.20 * 10.0)  # after a dip: first crossing
    assert first_crossing(CURVE, 0.31) is None
    assert first_crossing(CURVE, -0.1) == 0.0
    with pytest.raises(ValueError, match="sorted by compute"):
        first_crossing([(0.0, 0.0), (5.0, 0.1), (3.0, 0.2)], 0.1)


def test_headline_ratio_when_grpo_reaches_the_gain():
    out = headline_ratio(CURVE, rm_gain=0.10, rm_compute=5.0, unit="wall_s")
    assert out["reached"] is True
    assert out["grpo_compute"] == pytest.approx(15.0) and out["grpo_compute_checkpoint"] == 20.0
    assert out["ratio"] == pytest.approx(3.0) and out["ratio_lower_bound"] is None
    assert "ratio 3" in out["text"] and "+0.100" in out["text"]


def test_headline_ratio_when_grpo_never_reaches_it_gives_a_lower_bound():
    out = headline_ratio(CURVE, rm_gain=0.5, rm_compute=8.0, unit="tokens")
    assert out["reached"] is False and out["ratio"] is None
    assert out["grpo_budget"] == 40.0 and out["ratio_lower_bound"] == pytest.approx(5.0)
    assert "never reached" in out["text"] and "budget B = 40 tokens" in out["text"] and "ratio > 5" in out["text"]


def test_headline_ratio_without_a_reasonmaxxer_gain_has_no_ratio():
    out = headline_ratio(CURVE, rm_gain=-0.02, rm_compute=8.0, unit="wall_s")
    assert out["reached"] is None and out["ratio"] is None and out["ratio_lower_bound"] is None
    assert "did not improve" in out["text"]
    with pytest.raises(ValueError, match="must be positive"):
        headline_ratio(CURVE, 0.1, 0.0, "wall_s")
    with pytest.raises(ValueError, match="curve is empty"):
        headline_ratio([], 0.1, 1.0, "wall_s")


def _point(step, seconds, gain):
    return {"step": step, "compute": {"wall_s": seconds, "tokens": 100.0 * seconds}, "gain": gain}


def test_mean_curve_averages_seeds_over_common_steps():
    a = [_point(0, 0, 0.0), _point(2, 10, 0.1), _point(4, 20, 0.3)]
    b = [_point(0, 0, 0.0), _point(2, 14, 0.3)]  # this seed stopped earlier
    assert mean_curve([a, b], "wall_s") == [(0.0, 0.0), (12.0, pytest.approx(0.2))]
    assert mean_curve([a], "tokens")[-1] == (2000.0, 0.3)


def _result(correct_by_problem, greedy_by_problem):
    return {
        "records": [
            {"id": f"p{i}", "num_correct": sum(c), "correct": c, "greedy_correct": g}
            for i, (c, g) in enumerate(zip(correct_by_problem, greedy_by_problem))
        ]
    }


def test_pooled_metric_averages_seeds_per_problem_then_takes_stderr_over_problems():
    seed0 = _result([[True, True], [False, False]], [True, False])
    seed1 = _result([[True, False], [False, True]], [True, True])
    mean, stderr = pooled_metric([seed0, seed1])  # per problem 0.75 and 0.25
    assert mean == pytest.approx(0.5)
    assert stderr == pytest.approx(math.sqrt(((0.25**2 + 0.25**2) / 1) / 2))
    assert pooled_metric([seed0, seed1], "greedy_accuracy")[0] == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="not 'maj@4'"):
        pooled_metric([seed0], "maj@4")


def test_eval_generated_tokens_counts_samples_and_greedy():
    summary = {
        "num_problems": 10,
        "num_samples": 4,
        "mean_completion_tokens": 50.0,
        "greedy_mean_completion_tokens": 30.0,
    }
    assert eval_generated_tokens(summary) == 10 * 4 * 50 + 10 * 30
    assert eval_generated_tokens({"num_problems": 3, "num_samples": 0, "greedy_mean_completion_tokens": 7.0}) == 21


def _ledger(seconds, peak):
    return {
        "seconds": {"generation": seconds, "training": 1.0},
        "compute_wall_s": seconds + 1.0,
        "compute_tokens": 10.0 * seconds,
        "token_totals": {"generated": seconds, "forwarded": 2.0, "backpropagated": 1.0},
        "peak_memory_bytes": peak,
        "peak_memory_kind": "rss_peak",
        "device": "cpu",
    }


def test_mean_ledger_averages_cost_and_keeps_the_largest_peak():
    out = mean_ledger([_ledger(2.0, 100), _ledger(4.0, 300)])
    assert out["seconds"] == {"generation": 3.0, "training": 1.0}
    assert out["compute_wall_s"] == 4.0 and out["token_totals"]["generated"] == 3.0
    assert out["peak_memory_bytes"] == 300


def test_engines_used_pools_the_seeds():
    from trl_reasonmaxxer.benchmarking.report import engines_used

    same = {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}
    assert engines_used([same, same]) == same
    assert engines_used([same, {"rollouts": "transformers"}]) == {
        "rollouts": "llama.cpp + transformers",
        "evaluation": "llama.cpp",
    }
    assert engines_used([{}]) == {}


def test_grpo_steps_for_a_token_budget():
    # 8 completions of 195 tokens after 60-token prompts: 195 generated + 3 × 255 forwarded/back-propagated each
    assert grpo_step_tokens(60, 195, 8) == 8 * (195 + 3 * 255) == 7680
    assert grpo_steps_for_budget(266_000, 7680) == 35  # 34.6 steps: rounded up, never under the budget
    assert grpo_steps_for_budget(3 * 7680, 7680) == 3  # exactly on a step
    assert grpo_steps_for_budget(0, 7680) == 1
    with pytest.raises(ValueError, match="must be positive"):
        grpo_steps_for_budget(100, 0)
    with pytest.raises(ValueError, match="completions_per_step >= 1"):
        grpo_step_tokens(60, 195, 0)


def test_build_evidence_pairs_seed_averaged_problems_and_lists_missing_pieces():
    from trl_reasonmaxxer.benchmarking.pieces import piece_name, plan_pieces
    from trl_reasonmaxxer.stats import paired_difference

    expected = [piece_name(m, s) for m, s in plan_pieces([1, 3], [0, 1], gate_ablation=False)]
    evidence = build_evidence(synthetic.all_pieces(), expected, commit="HEAD", num_resamples=2000)
    for key in ("task", "model", "n_test_problems", "samples_per_problem", "seeds", "methods", "paired", "transfer"):
        assert key in evidence
    assert (evidence["task"], evidence["n_test_problems"], evidence["samples_per_problem"]) == ("svamp", 4, 2)
    assert evidence["seeds"] == [0, 1] and evidence["commit"] == "HEAD"
    assert evidence["missing"] == ["grpo_3x-seed1"] and "grpo_3x-seed0" in evidence["pieces"]
    assert list(evidence["methods"]) == ["base", "reasonmaxxer", "grpo_equal", "grpo_3x"]
    rm = evidence["methods"]["reasonmaxxer"]
    assert rm["seeds"] == [0, 1] and rm["compute_tokens"] == 1100.0 and rm["compute_wall_s"] == 110.0
    assert rm["pass@1"] == pytest.approx((0.75 + 0.5 + 1 + 0.25) / 4)  # seeds averaged per problem
    assert evidence["methods"]["base"]["ledger"] is None and evidence["methods"]["base"]["compute_tokens"] == 0.0

    # per problem (seeds averaged) minus base: p0 .75-0, p1 .5-.5, p2 1-1, p3 .25-0
    paired = evidence["paired"]
    assert set(paired) >= set(REQUIRED_PAIRS)
    assert paired["reasonmaxxer-base"]["mean"] == pytest.approx(0.25)
    assert paired["grpo_equal-base"]["mean"] == pytest.approx(0.0625)
    assert paired["grpo_3x-base"]["mean"] == pytest.approx(0.25) and paired["grpo_3x-base"]["seeds"]["grpo_3x"] == [0]
    assert paired["reasonmaxxer-grpo_equal"]["mean"] == pytest.approx(0.1875)
    # grpo_3x has seed 0 only, so ReasonMaxxer is held to its seed 0 there: p1 .5 - 1 (seed 1's +.25 on p0, p3 left out)
    assert paired["reasonmaxxer-grpo_3x"]["mean"] == pytest.approx(-0.125)
    assert paired["reasonmaxxer-grpo_3x"]["seeds"] == {"reasonmaxxer": [0], "grpo_3x": [0]}
    # what 3x buys GRPO, on seed 0 (the only one grpo_3x has): p0 .5 - 0, p1 1 - .5
    assert paired["grpo_3x-grpo_equal"]["mean"] == pytest.approx(0.25)
    assert paired["grpo_3x-grpo_equal"]["seeds"] == {"grpo_3x": [0], "grpo_equal": [0]}
    assert "grpo_equal-grpo_3x" not in paired and "grpo_equal-grpo_equal" not in paired
    scores = {"p0": 0.75, "p1": 0.5, "p2": 1.0, "p3": 0.25}
    by_hand = paired_difference(scores, {"p0": 0.0, "p1": 0.5, "p2": 1.0, "p3": 0.0}, num_resamples=2000, seed=0)
    assert paired["reasonmaxxer-base"]["ci95"] == by_hand["ci95"]
    lo, hi = paired["reasonmaxxer-base"]["ci95"]
    assert lo <= 0.25 <= hi and paired["reasonmaxxer-base"]["n"] == 4
    assert evidence["paired_greedy"]["reasonmaxxer-base"]["mean"] == pytest.approx((0.5 + 0 + 0 + 0) / 4)
    # transfer: ReasonMaxxer and base only; GRPO has no transfer evaluation here, so its entries are None
    assert evidence["transfer"]["reasonmaxxer-base"]["mean"] == pytest.approx((0.25 + 0 + 0.25 + 0) / 4)
    assert evidence["transfer"]["grpo_equal-base"] is None and evidence["transfer"]["reasonmaxxer-grpo_equal"] is None

    # headline: ReasonMaxxer's validation gain 0.65 - 0.5 at 1100 tokens; grpo_3x (the most compute) crosses it at
    # 1500 + 0.5 × 1800 = 2400 tokens
    headline = evidence["headline"]
    assert headline["unit"] == "tokens" and headline["grpo_method"] == "grpo_3x"
    assert headline["target_gain"] == pytest.approx(0.15)
    assert headline["ratio"] == pytest.approx(2400 / 1100)
    assert evidence["headline_by_unit"]["wall_s"]["ratio"] == pytest.approx(240 / 110)
    assert evidence["fork_choice"]["0"]["fork"] == {"fork_threshold": 1.4}
    assert evidence["truncation"]["base_test"] == 0.15
    assert any("hit the 320-token budget" in w for w in evidence["warnings"])


def test_build_evidence_per_seed_pairs_each_piece_with_the_base():
    evidence = build_evidence(synthetic.all_pieces(), num_resamples=2000)
    per_seed = evidence["per_seed"]
    assert sorted(per_seed) == [
        "grpo_3x-seed0",  # seed 1's is the missing piece
        "grpo_equal-seed0",
        "grpo_equal-seed1",
        "reasonmaxxer-seed0",
        "reasonmaxxer-seed1",
    ]
    # by hand: seed 0 gains half a sample on p0 (pass@1 +0.125, greedy 0); seed 1 two halves and one greedy (+0.25)
    s0, s1 = per_seed["reasonmaxxer-seed0"], per_seed["reasonmaxxer-seed1"]
    assert (s0["paired"]["mean"], s0["paired_greedy"]["mean"]) == (0.125, 0.0)
    assert (s1["paired"]["mean"], s1["paired_greedy"]["mean"]) == (0.375, 0.25)
    assert s1["paired"]["seeds"] == {"reasonmaxxer": [1], "base": [None]}
    # same problems in every seed: the seeds' mean difference is the pooled one
    for key in ("paired", "paired_greedy", "transfer", "transfer_greedy"):
        pooled = evidence[key]["reasonmaxxer-base"]["mean"]
        assert abs((s0[key]["mean"] + s1[key]["mean"]) / 2 - pooled) < 1e-12
    assert per_seed["grpo_3x-seed0"]["transfer"] is None  # no transfer evaluation in that piece
    table = format_table(evidence)
    assert "per seed, test greedy − base: " in table and "reasonmaxxer-seed1 +0.250 [" in table


def test_build_evidence_splits_each_gain_by_whether_the_base_ran_out_of_tokens():
    evidence = build_evidence(synthetic.all_pieces(), num_resamples=2000)
    split = evidence["by_base_truncation"]
    # the base truncated a sample of p0 only (test); nothing on the transfer task
    assert split["n"] == {"test": {"truncated": 1, "finished": 3}, "transfer": {"truncated": 0, "finished": 4}}
    # ReasonMaxxer (seeds averaged) − base: p0 +0.75 where the base was cut off; p1 0, p2 0, p3 +0.25 elsewhere
    assert split["truncated"]["paired"]["reasonmaxxer-base"]["mean"] == pytest.approx(0.75)
    finished = split["finished"]["paired"]["reasonmaxxer-base"]
    assert finished["mean"] == pytest.approx(0.25 / 3) and finished["n"] == 3
    assert split["truncated"]["paired_greedy"]["reasonmaxxer-base"]["mean"] == pytest.approx(0.5)
    assert set(split["finished"]["paired"]) == {"reasonmaxxer-base", "grpo_equal-base", "grpo_3x-base"}
    # no problem on the truncated side of the transfer task; its finished side is the whole pooled difference
    assert split["truncated"]["transfer"]["reasonmaxxer-base"] is None
    assert split["finished"]["transfer"]["reasonmaxxer-base"] == evidence["transfer"]["reasonmaxxer-base"]
    table = format_table(evidence)
    assert (
        "test pass@1 − base, where a base sample hit the token budget (1 problems) and where none did (3): " in table
    )
    assert "reasonmaxxer truncated +0.750 [" in table and "reasonmaxxer finished +0.083 [" in table


def test_build_evidence_pairs_the_entropy_gate_with_each_ablation_on_their_shared_seeds():
    pieces = synthetic.all_pieces()
    random_gate = copy.deepcopy(pieces["reasonmaxxer-seed1"])
    del random_gate["transfer"], random_gate["validation"]  # the ablation is evaluated on test only
    random_gate |= {
        "method": "reasonmaxxer_random",
        "test": synthetic.evaluation([f"p{i}" for i in range(4)], [1, 1, 2, 1]),
    }
    evidence = build_evidence(pieces | {"reasonmaxxer_random-seed1": random_gate}, num_resamples=2000)
    # seed 1 alone: pass@1 (1, .5, 1, .5) - (.5, .5, 1, .5); greedy (1, 0, 1, 0) - (0, 0, 1, 0); pooling
    # ReasonMaxxer's seed 0 in would give 0.0 and 0.125
    gate = evidence["paired"]["reasonmaxxer-reasonmaxxer_random"]
    assert gate["mean"] == pytest.approx(0.125) and gate["n"] == 4
    assert gate["seeds"] == {"reasonmaxxer": [1], "reasonmaxxer_random": [1]}
    assert evidence["paired_greedy"]["reasonmaxxer-reasonmaxxer_random"]["mean"] == pytest.approx(0.25)
    assert evidence["paired"]["reasonmaxxer_random-base"]["mean"] == pytest.approx(0.25)
    assert evidence["transfer"]["reasonmaxxer-reasonmaxxer_random"] is None
    assert "  reasonmaxxer-reasonmaxxer_random: +0.125, 95% CI" in format_table(evidence)


def test_build_evidence_without_pieces_keeps_the_schema():
    evidence = build_evidence({}, ["base", "reasonmaxxer-seed0"])
    assert evidence["methods"] == {} and evidence["headline"] is None and evidence["per_seed"] == {}
    assert evidence["missing"] == ["base", "reasonmaxxer-seed0"]
    assert all(evidence["paired"][k] is None for k in REQUIRED_PAIRS)
    assert all(evidence["transfer"][k] is None for k in REQUIRED_PAIRS)


def test_format_table_shows_methods_paired_differences_headline_and_missing_pieces():
    evidence = build_evidence(synthetic.all_pieces(), ["grpo_3x-seed1"], num_resamples=200)
    table = format_table(evidence)
    lines = table.splitlines()
    assert "held-out test 4 problems × 2 samples + greedy" in lines[0] and "2 seed(s) [0, 1]" in lines[0]
    assert "transfer gsm8k 4" in lines[0]
    base_row = next(line for line in lines if line.startswith("base "))
    assert base_row.split()[-6:] == ["—"] * 6  # no training cost
    rm_row = next(line for line in lines if line.startswith("reasonmaxxer "))
    assert "0.625 ± " in rm_row and rm_row.split()[-1] == "2.00"  # peak GB
    assert "  reasonmaxxer-base: +0.250, 95% CI" in table
    assert "paired differences, gsm8k pass@1" in table
    assert (
        "fork choice, seed 0: fork_threshold=1.4 (validation: fork_threshold=1.2 0.550, fork_threshold=1.4 0.600)"
        in table
    )
    assert "headline (tokens, grpo_3x's curve): GRPO reached" in table
    assert "missing pieces (1): grpo_3x-seed1" in table and "warning: 15% of the base model's" in table
    assert "; reasonmaxxer rollouts llama.cpp, evaluation llama.cpp" in table


def test_plot_paired_draws_every_pair_sampled_and_greedy(tmp_path):
    evidence = build_evidence(synthetic.all_pieces(), num_resamples=200)
    rows = paired_rows(evidence)
    assert [row[0] for row in rows] == [
        "grpo_3x-base (test)",
        "grpo_equal-base (test)",
        "reasonmaxxer-base (test)",
        "reasonmaxxer-grpo_3x (test)",
        "reasonmaxxer-grpo_equal (test)",
        "grpo_3x-grpo_equal (test)",
        "reasonmaxxer-base (transfer)",
    ]
    _, evaluation, sampled, greedy = rows[2]
    assert evaluation == "test" and sampled["mean"] == 0.25 and greedy["mean"] == 0.125  # both metrics, not one twice
    assert rows[-1][1:] == (
        "transfer",
        evidence["transfer"]["reasonmaxxer-base"],
        evidence["transfer_greedy"]["reasonmaxxer-base"],
    )
    # a pair with only a greedy difference keeps its row; one with neither has none
    greedy_only = copy.deepcopy(evidence)
    name = rows[0][0].removesuffix(" (test)")
    greedy_only["paired"][name] = None
    assert paired_rows(greedy_only)[0] == (rows[0][0], "test", None, rows[0][3])
    greedy_only["paired_greedy"][name] = None
    assert rows[0][0] not in [row[0] for row in paired_rows(greedy_only)]
    assert os.path.getsize(plot_paired(greedy_only, str(tmp_path / "paired.png"))) > 0
    assert paired_rows(build_evidence({})) == []
    assert os.path.getsize(plot_paired(build_evidence({}), str(tmp_path / "empty.png"))) > 0
