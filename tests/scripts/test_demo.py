"""The demo's command line and report, without the real model (the real run is recorded in docs/benchmarks.md)."""

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.scripts import demo


def parse(*argv):
    (config,) = demo.make_parser().parse_args_and_config(args=list(argv))
    return config


def test_quick_budget_is_smaller_in_every_dimension():
    quick, full = parse("--quick"), parse()
    for field in ("num_train_problems", "num_test_problems", "num_generations", "max_completion_length"):
        assert getattr(quick, field) <= getattr(full, field)
    assert quick.num_train_problems * quick.num_generations < full.num_train_problems * full.num_generations
    assert (quick.output_dir, full.output_dir) == ("runs/demo-quick", "runs/demo")


def test_cli_passes_quick_budget_and_overrides(monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda config: calls.append(config))
    cli.main(["demo", "--quick", "--num_test_problems", "3", "--dataset_name", "gsm8k", "--seed", "7"])
    config = calls[0]
    assert config.output_dir == "runs/demo-quick" and config.model_name_or_path == "default"
    assert config.dataset_name == "gsm8k" and config.seed == 7 and config.quick
    assert config.num_test_problems == 3 and config.num_train_problems == demo.DemoConfig.QUICK["num_train_problems"]
    assert config.prompt_style == "brief"
    cli.main(["demo", "--prompt_style", "paper"])
    assert (
        calls[1].prompt_style == "paper" and calls[1].max_completion_length == demo.DemoConfig().max_completion_length
    )


def test_format_table_shows_both_models_with_stderr():
    summary = {
        "pass@1": 0.25,
        "pass@1_stderr": 0.1,
        "extraction_rate": 0.9,
        "truncation_rate": 0.05,
        "mean_completion_tokens": 120.0,
    }
    report = {
        "label": "default",
        "model": "m",
        "task": "svamp",
        "seed": 1,
        "device": "cpu",
        "budget": {"num_samples": 2, "num_test_problems": 16},
        "pool": {"pool/prompts_selected": 5},
        "wall_time_s": {"eval_base": 12.0},
        "base": summary,
        "reasonmaxxer": summary | {"pass@1": 0.5},
    }
    table = demo.format_table(report)
    assert "base" in table and "reasonmaxxer" in table
    assert "0.250 ± 0.100" in table and "0.500 ± 0.100" in table
    assert "5 selected problems" in table and "eval_base 12s" in table
