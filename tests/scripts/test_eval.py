"""``trl-reasonmaxxer eval`` on the tiny model and a local dataset: the base model, then an adapter on top of it."""

import json

from trl_reasonmaxxer import cli


def test_eval_writes_every_model_and_a_plot(tiny_pair, tiny_model_dir, tmp_path, capsys):
    model, _ = tiny_pair
    adapter = str(tmp_path / "adapter")
    model.save_pretrained(adapter)
    data = tmp_path / "data.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"what is {i} plus {i} ?"}], "solution": str(2 * i)} for i in range(3)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--num_problems", "2"]
    argv += ["--num_samples", "2", "--max_completion_length", "3", "--output_dir", str(out), "--adapter", adapter]
    cli.main(["eval", *argv])
    printed = capsys.readouterr().out
    assert printed.startswith("base: pass@1") and f"{adapter}: pass@1" in printed
    results = json.loads((out / "eval.json").read_text())
    assert list(results) == ["base", adapter]
    # the adapter is paired with the model alone, problem by problem (here the same weights: a zero difference)
    paired = results[adapter]["paired_vs_base"]
    assert set(paired) == {"pass@1", "greedy"} and paired["greedy"]["n"] == 2 and paired["greedy"]["mean"] == 0.0
    assert "paired greedy difference (adapter - base): +0.000, 95% CI [+0.000, +0.000] over 2 problems" in printed
    assert "paired_vs_base" not in results["base"]
    assert results["base"]["summary"]["num_problems"] == 2 and results["base"]["summary"]["max_new_tokens"] == 3
    assert (out / "eval.png").stat().st_size > 0
