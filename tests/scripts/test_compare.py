"""``trl-reasonmaxxer compare``: the quick budget and the flags that reach the comparison (the runner itself is tested
in tests/benchmarking)."""

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.benchmarking import compare
from trl_reasonmaxxer.scripts.compare import CompareScriptArguments, make_parser


def test_quick_budget_is_smaller():
    (_, quick), (_, full) = make_parser().parse_args_and_config(["--quick"]), make_parser().parse_args_and_config([])
    for name in (
        "num_pool_problems",
        "num_test_problems",
        "num_generations",
        "max_completion_length",
        "grpo_max_steps",
    ):
        assert getattr(quick, name) <= getattr(full, name)


def test_cli_overrides_budget_fields(monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "run_comparison", lambda *a, **k: calls.append((a, k)))
    cli.main(["compare", "--quick", "--grpo_max_steps", "7", "--learning_rate", "0.01", "--seeds", "1", "2"])
    (output_dir, model, dataset_name, budget, seeds, ablation, reward, split_seed, label), kwargs = calls[0]
    assert output_dir == "runs/compare-quick" and model == "default" and dataset_name == "svamp"
    assert budget.grpo_max_steps == 7 and budget.learning_rate == 0.01
    assert budget.num_pool_problems == CompareScriptArguments.QUICK["num_pool_problems"]
    assert seeds == [1, 2] and split_seed == 42 and not ablation
    assert reward.__name__ == "math_accuracy_reward" and label == "quick smoke run"
    assert kwargs == {"methods": None, "pieces_dir": None}


def test_pieces_flags_reach_the_comparison(monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "run_comparison", lambda *a, **k: calls.append(k))
    argv = ["compare", "--methods", "reasonmaxxer", "grpo_equal", "--seeds", "1", "--pieces_dir", "p"]
    cli.main([*argv, "--grpo_compute_multiples", "1", "3", "--fork_thresholds", "1.2", "1.4", "--eval_seed", "0"])
    assert calls == [{"methods": ["reasonmaxxer", "grpo_equal"], "pieces_dir": "p"}]
    _, budget = make_parser().parse_args_and_config(["--grpo_compute_multiples", "1", "3", "--fork_fractions", "0.05"])
    assert budget.grpo_compute_multiples == [1.0, 3.0] and budget.fork_fractions == [0.05]
    assert budget.fork_candidates() == [{"fork_fraction": 0.05}]
    assert make_parser().parse_args_and_config([])[1].fork_candidates() == [{}]
