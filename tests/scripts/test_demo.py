"""The demo's command line and report, without the real model (the real run is recorded in docs/benchmarks.md)."""

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.scripts import demo


def test_quick_budget_is_smaller_in_every_dimension():
    quick, full = demo.DemoBudget.quick(), demo.DemoBudget()
    for field in ("train_problems", "test_problems", "num_generations", "max_new_tokens"):
        assert getattr(quick, field) <= getattr(full, field)
    assert quick.train_problems * quick.num_generations < full.train_problems * full.num_generations


def test_cli_passes_quick_budget_and_overrides(monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append((a, kw)))
    cli.main(["demo", "--quick", "--test-problems", "3", "--task", "gsm8k", "--seed", "7"])
    (output_dir, model, task, budget, seed), kw = calls[0]
    assert output_dir == "runs/demo-quick" and model == "default" and task == "gsm8k" and seed == 7
    assert budget.test_problems == 3 and budget.train_problems == demo.DemoBudget.quick().train_problems
    assert kw["label"] == "quick smoke run"
    assert budget.prompt_style == "brief"
    cli.main(["demo", "--prompt-style", "paper"])
    assert calls[1][0][3].prompt_style == "paper" and calls[1][0][3].max_new_tokens == demo.DemoBudget().max_new_tokens


def test_cli_prompt_styles_match_the_task_templates():
    from trl_reasonmaxxer.tasks import PROMPT_TEMPLATES

    assert set(cli.PROMPT_STYLES) == set(PROMPT_TEMPLATES)


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
        "budget": {"eval_samples": 2, "test_problems": 16},
        "pool": {"pool/prompts_selected": 5},
        "wall_time_s": {"eval_base": 12.0},
        "base": summary,
        "reasonmaxxer": summary | {"pass@1": 0.5},
    }
    table = demo.format_table(report)
    assert "base" in table and "reasonmaxxer" in table
    assert "0.250 ± 0.100" in table and "0.500 ± 0.100" in table
    assert "5 selected problems" in table and "eval_base 12s" in table
