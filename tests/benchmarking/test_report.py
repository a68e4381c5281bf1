"""The comparison's arithmetic without a model: splits, the headline ratio on synthetic curves, seed pooling and the
table."""

import math

import pytest

from trl_reasonmaxxer.benchmarking.report import (
    eval_generated_tokens,
    first_crossing,
    format_table,
    headline_ratio,
    mean_curve,
    mean_ledger,
    pooled_metric,
    split_indices,
)


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


def test_format_table_shows_every_method_the_seed_count_and_the_headline():
    ledger = mean_ledger([_ledger(2.0, 2e9)])
    report = {
        "config": {
            "model": "m",
            "task": "svamp",
            "seeds": [0, 1],
            "device": "cpu",
            "budget": {"num_samples": 4},
            "sizes": {"pool": 8, "validation": 6, "test": 12},
        },
        "summary": {
            "methods": {
                "base": {"pass@1": (0.25, 0.1), "greedy": (0.2, 0.1)},
                "GRPO": {"pass@1": (0.3, 0.1), "greedy": (0.2, 0.1), "ledger": ledger},
                "ReasonMaxxer": {"pass@1": (0.4, 0.1), "greedy": (0.3, 0.1), "ledger": ledger},
            },
            "headline": {"wall_s": {"text": "GRPO never reached it."}},
        },
    }
    table = format_table(report)
    assert "2 seed(s) [0, 1]" in table and "held-out test 12" in table and "(k=4)" in table
    assert "0.400 ± 0.100" in table and "headline (wall_s): GRPO never reached it." in table
    assert table.splitlines()[2].split()[-5:] == ["—"] * 5  # base has no training cost
    assert table.splitlines()[3].split()[-1] == "2.00"  # peak GB
    assert "engines" not in table  # a report from before the engines were recorded
    methods = report["summary"]["methods"]
    methods["GRPO"]["engines"] = {"rollouts": "transformers", "evaluation": "llama.cpp"}
    methods["ReasonMaxxer"]["engines"] = {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}
    line = next(x for x in format_table(report).splitlines() if x.startswith("engines: "))
    assert line == (
        "engines: GRPO rollouts transformers, evaluation llama.cpp; ReasonMaxxer rollouts llama.cpp, evaluation "
        "llama.cpp"
    )


def test_engines_used_pools_the_seeds():
    from trl_reasonmaxxer.benchmarking.report import engines_used

    same = {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}
    assert engines_used([same, same]) == same
    assert engines_used([same, {"rollouts": "transformers"}]) == {
        "rollouts": "llama.cpp + transformers",
        "evaluation": "llama.cpp",
    }
    assert engines_used([{}]) == {}
