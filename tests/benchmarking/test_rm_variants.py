"""benchmarks/rm_variants.py and compare.validate_variants: ReasonMaxxer variants (config overrides) trained on a
seed's cached pool, scored on validation only and paired with the base model's piece."""

import json

import pytest

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.benchmarking import compare

from ..helpers import load_benchmark
from .test_compare import _runner, _write_data


def test_variants_are_parsed_and_checked():
    bench = load_benchmark("rm_variants")
    assert bench.parse_variant("recipe") == {}
    assert bench.parse_variant("learning_rate=5e-5,neg_prob_floor=0.05,loss_type=adv_ratio") == {
        "learning_rate": 5e-5,
        "neg_prob_floor": 0.05,
        "loss_type": "adv_ratio",
    }
    assert bench.parse_variant("neg_prob_floor=null") == {"neg_prob_floor": None}
    with pytest.raises(ValueError, match="write `recipe` or key=value"):
        bench.parse_variant("learning_rate")
    with pytest.raises(ValueError, match=r"\['lr'\] are not ReasonMaxxerConfig fields"):
        compare.check_overrides({"lr": 1e-4})
    with pytest.raises(ValueError, match=r"cannot override \['fork_threshold', 'num_generations'\]"):
        compare.check_overrides({"num_generations": 4, "fork_threshold": 1.0, "beta": 0.5})
    with pytest.raises(ValueError, match=r"cannot override \['rollout_cache_root'\]"):  # the seed's shared pool
        compare.check_overrides({"rollout_cache_root": "elsewhere"})
    assert compare.check_overrides({"beta": 0.5}) == {"beta": 0.5}


def test_a_variant_trains_in_its_own_folder_and_keeps_the_recipes_key(tmp_path, monkeypatch):
    seen = []

    def train(self, seed, gate, fork, with_validation, overrides=None, extra_pool=None):
        seen.append(overrides)
        adapter = tmp_path / "adapter"
        adapter.mkdir(exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
        return {"adapter": str(adapter)}

    monkeypatch.setattr(compare._Runner, "train_reasonmaxxer", train)
    runner = _runner(tmp_path)
    runner.trained_reasonmaxxer(0, "entropy", {"fork_threshold": 1.4}, True, {"learning_rate": 5e-5})
    runner.trained_reasonmaxxer(0, "entropy", {"fork_threshold": 1.4}, True)
    assert seen == [{"learning_rate": 5e-5}, {}]
    variant = json.loads(
        (tmp_path / "seed0" / "reasonmaxxer-entropy-threshold1.4-learning_rate5e-05" / "run.json").read_text()
    )
    recipe = json.loads((tmp_path / "seed0" / "reasonmaxxer-entropy-threshold1.4" / "run.json").read_text())
    assert variant["run_key"]["overrides"] == {"learning_rate": 5e-5}
    # the recipe's key is the one the sweep has always written: its trainings are reused by the variants
    assert set(recipe["run_key"]) == {"seed", "gate", "fork", "with_validation", "settings"}


def test_variants_on_the_tiny_model_touch_validation_only(tiny_model_dir, tmp_path, monkeypatch, capsys):
    bench = load_benchmark("rm_variants")
    data = _write_data(tmp_path / "data.jsonl", 10)
    out = tmp_path / "out"
    common = ["--quick", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--output_dir", str(out)]
    common += ["--reward_func", "tests.helpers.alternating_reward", "--max_completion_length", "6", "--seeds", "0"]
    argv = [*common[:-2], "--fork_threshold", "1.0", "--out", str(tmp_path / "variants.json")]
    argv += ["--variants", "recipe", "learning_rate=0.05,beta=0.0,neg_prob_floor=0.5"]
    with pytest.raises(ValueError, match=r"base model's validation records in .*base.json, which does not exist"):
        bench.main(argv)
    cli.main(["compare", *common, "--methods", "base"])
    report = bench.main(argv)
    results = report["variants"]
    assert list(results) == ["recipe", "learning_rate=0.05,beta=0.0,neg_prob_floor=0.5"]
    for r in results.values():
        assert r["paired"]["n"] == 2 and 0 <= r["validation"] <= 1  # the quick budget's 2 validation problems
        assert r["kl"] is not None and r["fork_fraction"] is not None
    variant = results["learning_rate=0.05,beta=0.0,neg_prob_floor=0.5"]
    assert variant["overrides"] == {"learning_rate": 0.05, "beta": 0.0, "neg_prob_floor": 0.5}
    assert 0 <= variant["neg_floored"] <= 1 and results["recipe"]["neg_floored"] is None  # logged with a floor only
    assert json.loads((tmp_path / "variants.json").read_text())["variants"] == results
    assert (
        not list((out / "seed0").rglob("final_evaluation"))
        and "learning_rate=0.05,beta=0.0,neg_prob_floor=0.5" in capsys.readouterr().out
    )
    monkeypatch.setattr(compare._Runner, "train_reasonmaxxer", lambda *a, **k: pytest.fail("trained again"))
    assert bench.main(argv)["variants"] == results
    # the in-sample check: each variant and the base on the pool's own 4 problems, paired, kept beside the models
    fitted = bench.main([*argv, "--fit", "true"])["variants"]
    for name, r in fitted.items():
        assert {k: v for k, v in r.items() if k != "fit"} == results[name]
        assert r["fit"]["paired"]["n"] == 4 and 0 <= r["fit"]["pass@1"] <= 1
        assert r["fit"]["paired"]["mean"] == pytest.approx(r["fit"]["pass@1"] - r["fit"]["base"])
    assert fitted["recipe"]["fit"]["base"] == fitted["learning_rate=0.05,beta=0.0,neg_prob_floor=0.5"]["fit"]["base"]
    assert (out / "base" / "fit_evaluation" / "pool").is_dir()
    assert len(list((out / "seed0").glob("reasonmaxxer-*/fit_evaluation/pool"))) == 2
    assert "pool vs base" in capsys.readouterr().out
    # the diagnosis set: the data's 2 problems left over, samples and greedy, paired with the base, kept in chunks
    diagnosed = bench.main([*argv, "--diagnosis_problems", "2"])["variants"]
    for name, r in diagnosed.items():
        assert {k: v for k, v in r.items() if k != "diagnosis"} == results[name]
        d = r["diagnosis"]
        assert d["paired"]["n"] == d["paired_greedy"]["n"] == 2 and 0 <= d["greedy"] <= 1
        assert d["paired_greedy"]["mean"] == pytest.approx(d["greedy"] - d["base_greedy"])
    assert (out / "base" / "fit_evaluation" / "diagnosis").is_dir()
    assert len(list((out / "seed0").glob("reasonmaxxer-*/fit_evaluation/diagnosis"))) == 2
    assert "greedy vs base" in capsys.readouterr().out
    # a larger pool: 2 more problems of the data, disjoint from the comparison's splits, in a folder of their own
    monkeypatch.undo()
    larger = bench.main([*argv, "--variants", "recipe", "--extra_pool_problems", "2"])["variants"]["recipe"]
    assert larger["pool_problems"] == 6 and larger["paired"]["n"] == 2
    assert "trained on a pool of 6 problems" in capsys.readouterr().out
    key = json.loads(next((out / "seed0").glob("reasonmaxxer-*-pool6/run.json")).read_text())["run_key"]
    taken = {i for ids in json.loads((out / "pieces" / "base.json").read_text())["splits"].values() for i in ids}
    assert len(taken) == 8 and len(set(key["extra_pool"])) == 2 and not taken & set(key["extra_pool"])
    # a finished piece's adapter as the yardstick, on the same diagnosis set (its chunks beside its adapter)
    with pytest.raises(ValueError, match="give diagnosis_problems too"):
        bench.main([*argv, "--reference_pieces", "reasonmaxxer-seed0"])
    with pytest.raises(ValueError, match=r"No such reference pieces: \[.*reasonmaxxer-seed0.json"):
        bench.main([*argv, "--diagnosis_problems", "2", "--reference_pieces", "reasonmaxxer-seed0"])
    cli.main(["compare", *common, "--methods", "reasonmaxxer"])
    referenced = bench.main([*argv, "--diagnosis_problems", "2", "--reference_pieces", "reasonmaxxer-seed0"])
    reference = referenced["variants"]["reasonmaxxer-seed0"]
    assert reference["reference"] and reference["diagnosis"]["paired_greedy"]["n"] == 2
    assert reference["diagnosis"]["base_greedy"] == diagnosed["recipe"]["diagnosis"]["base_greedy"]
    # every other row is paired with the first reference on the same problems; the reference is not paired with itself
    assert "vs_reference" not in reference["diagnosis"]
    for name, r in referenced["variants"].items():
        if name != "reasonmaxxer-seed0":
            versus = r["diagnosis"]["vs_reference"]
            assert versus["name"] == "reasonmaxxer-seed0" and versus["paired_greedy"]["n"] == 2
            gap = r["diagnosis"]["greedy"] - reference["diagnosis"]["greedy"]
            assert versus["paired_greedy"]["mean"] == pytest.approx(gap)
    printed = capsys.readouterr().out
    assert "piece reasonmaxxer-seed0" in printed and "paired with the reference piece reasonmaxxer-seed0" in printed
