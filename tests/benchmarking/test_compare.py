"""GRPO vs ReasonMaxxer benchmark runner: the budget, the command line, local data, a --quick smoke run of the whole
command on the tiny model, and what an interrupted run keeps."""

import importlib.util
import json
import os

import pytest

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.benchmarking.compare import CompareConfig


def test_local_dataset_without_solution_is_refused(tmp_path):
    from trl_reasonmaxxer.benchmarking.compare import load_splits

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "what is 1 plus 1 ?"}) + "\n" for _ in range(6)))
    with pytest.raises(ValueError, match=r"lacks the columns \['solution'\]"):
        load_splits(str(path), CompareConfig(num_pool_problems=2, num_validation_problems=2, num_test_problems=2), 0)


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
            "--model_name_or_path",
            tiny_model_dir,
            "--dataset_name",
            str(data),
            "--reward_func",
            "tests.helpers.alternating_reward",
            "--max_completion_length",
            "6",
            "--output_dir",
            str(out),
            "--gate_ablation",
        ]
    )
    table = capsys.readouterr().out
    assert "1 seed(s) [42]" in table and "ReasonMaxxer gate=random" in table and "headline (wall_s)" in table
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
    # which engine each phase used (no GGUF for the tiny model: transformers everywhere), also in the table
    assert (
        run["grpo"]["engines"]
        == run["reasonmaxxer"]["engines"]
        == {
            "rollouts": "transformers",
            "evaluation": "transformers",
        }
    )
    assert report["summary"]["methods"]["base"]["engines"] == {"evaluation": "transformers"}
    assert "engines: base evaluation transformers; GRPO rollouts transformers" in table


def test_interrupted_comparison_keeps_the_methods_already_measured(tmp_path, monkeypatch):
    from trl_reasonmaxxer.benchmarking import compare

    fake_eval = {"summary": {"pass@1": 0.25, "engine": "transformers"}}
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
    assert partial["base"]["engines"] == {"evaluation": "transformers"}
    assert not (tmp_path / "compare.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_quick_comparison_with_llama_cpp_everywhere(tiny_model_dir, tmp_path, capsys):
    """``--use_llama_cpp true --grpo_use_llama_cpp true``: every evaluation, ReasonMaxxer's rollouts and GRPO's
    rollouts (TRL's rollout_func, the LoRA exported every step) sample with llama.cpp, and the report says so."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_reasonmaxxer.testing import save_tiny_gguf

    gguf = save_tiny_gguf(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        str(tmp_path / "tiny.gguf"),
    )
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": [{"role": "user", "content": f"what is {i} plus 1 ?"}], "solution": str(i + 1)})
            + "\n"
            for i in range(8)
        )
    )
    out = tmp_path / "out"
    argv = ["compare", "--quick", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data)]
    argv += ["--reward_func", "tests.helpers.alternating_reward", "--max_completion_length", "4"]
    argv += ["--output_dir", str(out), "--use_llama_cpp", "true", "--llama_cpp_model_path", gguf]
    cli.main([*argv, "--grpo_use_llama_cpp", "true"])
    assert "GRPO rollouts: llama.cpp engine on tiny.gguf" in capsys.readouterr().err
    report = json.loads((out / "compare.json").read_text())
    both = {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}
    assert report["summary"]["methods"]["GRPO"]["engines"] == both
    assert report["summary"]["methods"]["ReasonMaxxer"]["engines"] == both
    assert report["base"]["engines"] == {"evaluation": "llama.cpp"}
    assert report["config"]["budget"]["grpo_use_llama_cpp"] is True
    assert 0 < report["runs"][0]["grpo"]["ledger"]["token_totals"]["generated"] <= 2 * 4 * 4
