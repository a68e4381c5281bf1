"""The demo's command line and report, without the real model (the real run is recorded in docs/benchmarks.md)."""

import json

import pytest

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


def _report(base: dict, tuned: dict, **fields) -> dict:
    """A demo report as ``run_demo`` writes it, around the two summaries; ``fields`` replace its defaults."""
    defaults = {"label": "default", "model": "m", "task": "svamp", "seed": 1, "device": "cpu", "pool": {}}
    return defaults | {"wall_time_s": {}, "base": base, "reasonmaxxer": tuned} | fields


def test_format_table_shows_both_models_with_stderr():
    summary = {
        "pass@1": 0.25,
        "pass@1_stderr": 0.1,
        "extraction_rate": 0.9,
        "truncation_rate": 0.05,
        "mean_completion_tokens": 120.0,
    }
    report = _report(
        summary,
        summary | {"pass@1": 0.5},
        budget={"num_samples": 2, "num_test_problems": 16},
        pool={"pool/prompts_selected": 5},
        wall_time_s={"eval_base": 12.0},
    )
    table = demo.format_table(report)
    assert "base" in table and "reasonmaxxer" in table
    assert "0.250 ± 0.100" in table and "0.500 ± 0.100" in table
    assert "5 selected problems" in table and "eval_base 12s" in table


@pytest.mark.slow
@pytest.mark.parametrize("use_llama_cpp", [False, True])
def test_demo_records_the_engine_of_each_phase(use_llama_cpp, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The whole demo on the tiny model and a local train/test dataset: ``demo.json`` names the engine of the base
    evaluation, the rollouts and the adapter's evaluation (llama.cpp applies the trained LoRA as a GGUF LoRA)."""

    from datasets import Dataset, DatasetDict

    from ..helpers import alternating_reward

    monkeypatch.setattr(demo, "math_accuracy_reward", alternating_reward)  # mixed groups from the tiny model
    rows = [
        {"prompt": [{"role": "user", "content": f"what is {i} plus 1 ?"}], "solution": str(i + 1)} for i in range(6)
    ]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:2])}).save_to_disk(tmp_path / "d")
    argv = ["--quick", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(tmp_path / "d")]
    argv += ["--max_completion_length", "4", "--output_dir", str(tmp_path / "out"), "--use_llama_cpp", "false"]
    engine = "transformers"
    if use_llama_cpp:
        pytest.importorskip("llama_cpp")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trl_reasonmaxxer.testing import save_tiny_gguf

        gguf = save_tiny_gguf(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            AutoTokenizer.from_pretrained(tiny_model_dir),
            str(tmp_path / "tiny.gguf"),
        )
        argv[-1], engine = "true", "llama.cpp"
        argv += ["--llama_cpp_model_path", gguf]
    report = demo.main(parse(*argv))
    engines = {"eval_base": engine, "rollouts": engine, "eval_reasonmaxxer": engine}
    assert report["engines"] == engines
    assert json.loads((tmp_path / "out" / "demo.json").read_text())["engines"] == engines
    assert f"engines: eval_base {engine}, rollouts {engine}" in capsys.readouterr().out


def test_the_demo_pairs_the_adapter_with_the_base_and_says_when_it_cannot_tell():
    def result(correct, greedy):
        records = [{"id": str(i), "correct": c, "greedy_correct": g} for i, (c, g) in enumerate(zip(correct, greedy))]
        return {"summary": {"pass@1": 0.0}, "records": records}

    base = result([[False, False]] * 4, [False] * 4)
    tuned = result([[True, False], [False, False], [False, False], [False, False]], [True, False, False, False])
    paired = demo.paired_differences(tuned, base)
    assert set(paired) == {"pass@1", "greedy"}
    assert paired["pass@1"]["mean"] == pytest.approx(0.125) and paired["greedy"]["mean"] == pytest.approx(0.25)
    assert (paired["greedy"]["better"], paired["greedy"]["worse"], paired["greedy"]["n"]) == (1, 0, 4)
    no_greedy = {"records": [{k: v for k, v in r.items() if k != "greedy_correct"} for r in tuned["records"]]}
    assert set(demo.paired_differences(no_greedy, base)) == {"pass@1"}
    summary = {"pass@1": 0.1, "pass@1_stderr": 0.1, "extraction_rate": 1.0, "truncation_rate": 0.0}
    summary |= {"mean_completion_tokens": 1.0}
    report = _report(summary, summary, budget={"num_samples": 2, "num_test_problems": 4}, paired=paired)
    table = demo.format_table(report)
    assert "paired greedy difference (reasonmaxxer - base): +0.250, 95% CI [" in table
    assert "over 4 problems (1 better, 0 worse" in table
    if not any(d["resolved"] for d in paired.values()):
        assert "This demo's size cannot resolve" in table


def test_demo_transfer_benchmark_pairs_each_adapter_with_the_base_and_resumes(
    tiny_model_dir, tmp_path, capsys, caplog, monkeypatch
):
    """``benchmarks/demo_transfer.py --quick`` on the tiny model: trains the demo's adapter, evaluates base and
    adapter on GSM8K problems, pairs them; run again, it reuses the adapter and both evaluations."""
    from ..helpers import alternating_reward, load_benchmark

    monkeypatch.setattr(demo, "math_accuracy_reward", alternating_reward)  # the tiny model solves nothing

    bench = load_benchmark("demo_transfer")
    out = tmp_path / "transfer.json"
    argv = ["--model", tiny_model_dir, "--quick", "--num-problems", "3", "--workdir", str(tmp_path / "work")]
    argv += ["--out", str(out)]
    report = bench.main(argv)
    assert json.loads(out.read_text()) == report and report["n_problems"] == 3 and report["task"] == "gsm8k"
    paired = report["demo"]["lr0.0001"]["paired"]
    assert set(paired) == {"greedy"} and paired["greedy"]["n"] == 3
    assert report["demo"]["lr0.0001"]["training"]["steps"] >= 1 and "commit" in report
    assert "lr0.0001 greedy - base:" in capsys.readouterr().out
    (tmp_path / "work" / "eval-base-brief.json").write_text('{"key": ')  # cut mid-write: evaluated again
    report, first = bench.main(argv), report
    assert report["base"]["wall_time_s"] != first["base"]["wall_time_s"]  # evaluated again, to the same result
    assert {**report["base"], "wall_time_s": 0} == {**first["base"], "wall_time_s": 0}
    assert "eval-base-brief.json is damaged or was made with other settings: made again" in caplog.text
    monkeypatch.setattr(bench, "train_adapter", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(bench, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    again = bench.main(argv)  # nothing is trained or evaluated again
    assert again["demo"] == report["demo"] and again["base"] == report["base"]
