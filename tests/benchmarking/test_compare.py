"""GRPO vs ReasonMaxxer benchmark: splits, the headline ratio on synthetic curves, seed pooling, and a --quick
smoke run of the whole command on the tiny model."""

import json
import math
import os

import pytest

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.benchmarking.compare import (
    CompareBudget,
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
            "budget": {"eval_samples": 4},
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


def test_quick_budget_is_smaller():
    quick, full = CompareBudget.quick(), CompareBudget()
    for name in ("pool_problems", "test_problems", "num_generations", "max_new_tokens", "grpo_max_steps"):
        assert getattr(quick, name) <= getattr(full, name)


def test_cli_overrides_budget_fields(monkeypatch):
    from trl_reasonmaxxer.benchmarking import compare

    calls = []
    monkeypatch.setattr(compare, "run_comparison", lambda *a: calls.append(a))
    cli.main(["compare", "--quick", "--grpo-max-steps", "7", "--learning-rate", "0.01", "--seeds", "1", "2"])
    output_dir, model, task, dataset, budget, seeds, ablation, reward, split_seed, label = calls[0]
    assert output_dir == "runs/compare-quick" and model == "default" and task == "svamp" and dataset is None
    assert budget.grpo_max_steps == 7 and budget.learning_rate == 0.01
    assert budget.pool_problems == CompareBudget.quick().pool_problems
    assert (
        seeds == [1, 2] and not ablation and reward.__name__ == "math_accuracy_reward" and label == "quick smoke run"
    )


def test_local_dataset_without_solution_is_refused(tmp_path):
    from trl_reasonmaxxer.benchmarking.compare import load_splits

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "what is 1 plus 1 ?"}) + "\n" for _ in range(6)))
    with pytest.raises(ValueError, match=r"lacks the columns \['solution'\]"):
        load_splits("svamp", str(path), CompareBudget.quick(), 0)


@pytest.mark.slow
def test_quick_comparison_runs_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    with open(data, "w") as f:
        for i in range(10):
            prompt = [{"role": "user", "content": f"what is {i % 5} plus {i % 4} ?"}]
            f.write(json.dumps({"prompt": prompt, "solution": str(i % 5 + i % 4)}) + "\n")
    out = tmp_path / "out"
    cli.main(
        [
            "compare",
            "--quick",
            "--model",
            tiny_model_dir,
            "--dataset",
            str(data),
            "--reward",
            "tests.helpers.alternating_reward",
            "--max-new-tokens",
            "6",
            "--output-dir",
            str(out),
            "--gate-ablation",
        ]
    )
    table = capsys.readouterr().out
    assert "1 seed(s) [0]" in table and "ReasonMaxxer gate=random" in table and "headline (wall_s)" in table
    for name in ("compare.json", "compare_pass1.png", "compare_curve.png", "compare_curve_tokens.png"):
        assert os.path.getsize(out / name) > 0
    report = json.loads((out / "compare.json").read_text())
    splits = report["splits"]
    assert not set(splits["pool"]) & set(splits["test"]) and not set(splits["validation"]) & set(splits["test"])
    run = report["runs"][0]
    grpo, rm = run["grpo"]["ledger"], run["reasonmaxxer"]["ledger"]
    # GRPO: 2 steps × 4 completions of at most 6 tokens; its own token counter (prompt + completion) equals the
    # tokens our hook saw in its (gradient) training forwards
    assert 0 < grpo["token_totals"]["generated"] <= 2 * 4 * 6
    assert (
        grpo["grpo_num_input_tokens_seen"]
        == grpo["token_totals"]["forwarded"]
        == grpo["token_totals"]["backpropagated"]
    )
    assert [p["step"] for p in run["grpo"]["validation_curve"]] == [0, 1, 2]
    # ReasonMaxxer: 4 prompts × 4 rollouts, scored without gradient, then policy (grad) + reference (no grad)
    assert 0 < rm["token_totals"]["generated"] <= 4 * 4 * 6
    assert rm["tokens"]["scoring"]["forwarded"] > 0 and rm["tokens"]["scoring"]["backpropagated"] == 0
    assert rm["tokens"]["training"]["forwarded"] == 2 * rm["tokens"]["training"]["backpropagated"]
    for ledger in (grpo, rm):
        assert ledger["seconds"]["training"] > 0 and ledger["seconds"]["evaluation"] > 0
        assert ledger["peak_memory_bytes"] > 0
    # the ablation reuses the seed's cached rollouts and scores: nothing generated or scored again
    assert run["gate_ablation"]["random"]["ledger"]["token_totals"]["generated"] == 0
    assert set(report["summary"]["headline"]) == {"wall_s", "tokens"}
    assert not (out / "compare.partial.json").exists()  # superseded by the report


def test_interrupted_comparison_keeps_the_methods_already_measured(tmp_path, monkeypatch):
    from trl_reasonmaxxer.benchmarking import compare

    fake_eval = {"summary": {"pass@1": 0.25}}
    monkeypatch.setattr(compare, "load_splits", lambda *a: {"pool": [], "validation": [], "test": []})
    monkeypatch.setattr(compare._Runner, "load", lambda self: (None, None))
    monkeypatch.setattr(compare._Runner, "evaluate", lambda self, *a, **k: fake_eval)
    monkeypatch.setattr(compare._Runner, "run_grpo", lambda self, seed, base_val: {"seed_seen": seed})

    def crash(self, seed, gate, with_validation):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare._Runner, "run_reasonmaxxer", crash)
    with pytest.raises(KeyboardInterrupt):
        compare.run_comparison(output_dir=str(tmp_path), model=str(tmp_path), seeds=[3])
    partial = json.loads((tmp_path / "compare.partial.json").read_text())
    assert partial["base"]["test"] == fake_eval and partial["runs"] == [{"seed": 3, "grpo": {"seed_seen": 3}}]
    assert not (tmp_path / "compare.json").exists()
