"""benchmarks/footprints.py on the tiny model: the divergence of each trained piece's adapter against the base model,
found under --runs-dir, kept per adapter and reused, with clear errors for a missing adapter or piece."""

import json

import pytest

from trl_reasonmaxxer.benchmarking.compare import CompareConfig
from trl_reasonmaxxer.benchmarking.pieces import PieceStore, piece_settings

from ..helpers import load_benchmark
from .test_compare import _write_data


def _strong_adapter(model_dir, folder):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(30.0)
    peft.save_pretrained(str(folder))


def tiny_piece_store(model_dir, tmp_path, num_test_problems: int, max_completion_length: int):
    """``(settings, store)``: an empty pieces folder for a comparison of the tiny model on a local dataset."""
    data = _write_data(tmp_path / "data.jsonl", 6 + num_test_problems)
    budget = CompareConfig(
        num_pool_problems=3,
        num_validation_problems=2,
        num_test_problems=num_test_problems,
        max_completion_length=max_completion_length,
    )
    settings = piece_settings(model_dir, str(data), 0, "r", budget, 0, "ids")
    return settings, PieceStore(str(tmp_path / "pieces"), settings)


def test_footprints_of_the_trained_pieces(tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    bench = load_benchmark("footprints")
    _, store = tiny_piece_store(tiny_model_dir, tmp_path, num_test_problems=4, max_completion_length=6)
    store.save("base", {"method": "base", "seed": None, "test": {"summary": {"pass@1": 0.25}}})
    summary = {"pass@1": 0.5, "greedy_accuracy": 0.75}
    # recorded on another machine: found under --runs-dir by its seed<S>/<run> folders
    recorded = "/elsewhere/runs/seed0/reasonmaxxer-entropy-threshold1.4/adapter"
    store.save(
        "reasonmaxxer-seed0", {"method": "reasonmaxxer", "seed": 0, "test": {"summary": summary}, "adapter": recorded}
    )
    # a second piece with the very same adapter: its changes must coincide with the first's, position and token
    store.save(
        "reasonmaxxer_all-seed0",
        {"method": "reasonmaxxer_all", "seed": 0, "test": {"summary": summary}, "adapter": recorded},
    )
    runs = tmp_path / "runs"
    _strong_adapter(tiny_model_dir, runs / "seed0" / "reasonmaxxer-entropy-threshold1.4" / "adapter")
    argv = ["--pieces-dir", str(tmp_path / "pieces"), "--num-problems", "3", "--batch-size", "3"]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "footprints.json")]

    with pytest.raises(FileNotFoundError, match=r"pass the comparison's --output_dir .*footprints.py: --runs-dir"):
        bench.main(argv)
    inside = [*argv, "--runs-dir", str(runs), "--out", str(tmp_path / "pieces" / "footprints.json")]
    with pytest.raises(ValueError, match=r"--out .*footprints.json is in the pieces folder .*write it elsewhere"):
        bench.main(inside)  # before any work: every later compare run would stop on it
    assert not (tmp_path / "pieces" / "footprints.json").exists()
    results = bench.main([*argv, "--runs-dir", str(runs)])
    assert list(results) == ["reasonmaxxer-seed0", "reasonmaxxer_all-seed0"]
    name = "reasonmaxxer-seed0"
    r = results[name]
    assert (r["test_pass@1"], r["test_greedy"]) == (0.5, 0.75)
    assert len(r["ranks"]) == r["positions"] and results["reasonmaxxer_all-seed0"]["ranks"] == r["ranks"]
    assert 0 < r["positions"] <= 3 * 6 and r["num_problems"] == 3
    assert r["changed_percent"] == pytest.approx(r["reranked_percent"] + r["shifted_percent"])
    assert r["changed_percent"] > 0  # the strong random LoRA moves some greedy choices
    assert r["config"]["policies"] == ["base"] and r["config"]["max_completion_length"] == 6
    written = json.loads((tmp_path / "footprints.json").read_text())
    assert written["footprints"][name] == {k: v for k, v in r.items() if k != "ranks"}  # the ranks stay in --workdir
    changed = sum(rank > 1 for rank in r["ranks"])
    pair = written["agreement"]["reasonmaxxer-seed0 | reasonmaxxer_all-seed0"]
    assert pair["a"] == pair["b"] == pair["both"] == pair["same_token"] == changed
    assert pair["b_given_a"] == pair["same_given_both"] == 1.0
    out = capsys.readouterr().out
    assert "reasonmaxxer-seed0 | reasonmaxxer_all-seed0" in out and "same|both" in out

    monkeypatch.setattr(bench, "run_analysis", lambda *a, **k: pytest.fail("analysed again"))
    assert bench.main([*argv, "--runs-dir", str(runs)]) == results  # kept: reused
    (tmp_path / "work" / "reasonmaxxer-seed0.json").write_text("{")
    with pytest.raises(pytest.fail.Exception, match="analysed again"):  # damaged: made again
        bench.main([*argv, "--runs-dir", str(runs)])
    assert "reasonmaxxer-seed0.json is damaged or was made with other settings: made again" in caplog.text
    with pytest.raises(ValueError, match=r"No trained piece \['base'\] .* it has: reasonmaxxer-seed0"):
        bench.main([*argv, "--pieces", "base"])
