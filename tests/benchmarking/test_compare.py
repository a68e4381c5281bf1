"""GRPO vs ReasonMaxxer benchmark runner: the budget, the command line, local data, a --quick smoke run of the whole
command on the tiny model, the comparison in pieces (written as they end, skipped on resume, refused when made with
other settings), GRPO at multiples of ReasonMaxxer's compute, the fork sweep, transfer, and aggregation alone."""

import importlib.util
import json
import os

import pytest

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.benchmarking.compare import CompareConfig
from trl_reasonmaxxer.benchmarking.pieces import (
    PIECE_SCHEMA,
    PieceStore,
    grpo_method_name,
    piece_name,
    plan_pieces,
    select_methods,
)
from trl_reasonmaxxer.benchmarking.report import REQUIRED_PAIRS, grpo_steps_for_budget

from . import synthetic


def _write_data(path, n, offset=0):
    with open(path, "w") as f:
        for i in range(offset, offset + n):
            prompt = [{"role": "user", "content": f"what is {i % 5} plus {i % 4} ?"}]
            f.write(json.dumps({"prompt": prompt, "solution": str(i % 5 + i % 4)}) + "\n")
    return path


def _pieces(folder) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_local_dataset_without_solution_is_refused(tmp_path):
    from trl_reasonmaxxer.benchmarking.compare import load_splits

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "what is 1 plus 1 ?"}) + "\n" for _ in range(6)))
    with pytest.raises(ValueError, match=r"lacks the columns \['solution'\]"):
        load_splits(str(path), CompareConfig(num_pool_problems=2, num_validation_problems=2, num_test_problems=2), 0)


def test_plan_runs_reasonmaxxer_before_the_methods_that_read_its_piece():
    assert [grpo_method_name(m) for m in (1, 3, 0.5)] == ["grpo_equal", "grpo_3x", "grpo_0.5x"]
    plan = plan_pieces([1, 3], [0, 1], gate_ablation=True)
    assert [piece_name(m, s) for m, s in plan[:6]] == [
        "base",
        "reasonmaxxer-seed0",
        "grpo_equal-seed0",
        "grpo_3x-seed0",
        "reasonmaxxer_random-seed0",
        "reasonmaxxer_all-seed0",
    ]
    assert len(plan) == 11 and plan_pieces([], [7], False) == [("base", None), ("reasonmaxxer", 7), ("grpo", 7)]
    assert select_methods(plan, ["grpo_3x"]) == [("base", None), ("grpo_3x", 0), ("grpo_3x", 1)]
    with pytest.raises(ValueError, match=r"Unknown methods \['grpo'\]: this comparison has base, reasonmaxxer"):
        select_methods(plan, ["grpo"])
    with pytest.raises(ValueError, match="repeats a value"):
        plan_pieces([1, 1.0], [0], False)


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
    """run_comparison without a model (every piece's raw result comes from synthetic.py), the pieces it ran, and
    where to crash."""
    from trl_reasonmaxxer.benchmarking import compare

    calls, crash = [], {}
    ids = lambda prefix, n: {"id": [f"{prefix}{i}" for i in range(n)]}
    monkeypatch.setattr(compare, "load_splits", lambda *a: {"pool": ids("a", 2), "validation": ids("v", 2)})

    def run_base(self):
        calls.append("base")
        return synthetic.result("base", None)

    def run_piece(self, method, seed, base, store):
        calls.append(piece_name(method, seed))
        if calls[-1] == crash.get("at"):
            raise KeyboardInterrupt
        return synthetic.result(method, seed)

    monkeypatch.setattr(compare._Runner, "run_base", run_base)
    monkeypatch.setattr(compare._Runner, "run_piece", run_piece)
    budget = CompareConfig(grpo_compute_multiples=[1, 3], eval_seed=0)
    run = lambda **kw: compare.run_comparison(**{"output_dir": str(tmp_path), "model": "m", "budget": budget} | kw)
    return run, calls, crash


def test_an_interrupted_run_loses_no_finished_piece_and_skips_them_on_resume(fake_runs, tmp_path, capsys):
    run, calls, crash = fake_runs
    crash["at"] = "grpo_equal-seed1"
    with pytest.raises(KeyboardInterrupt):
        run(seeds=[0, 1])
    pieces = _pieces(tmp_path / "pieces")
    assert sorted(pieces) == ["base", "grpo_3x-seed0", "grpo_equal-seed0", "reasonmaxxer-seed0", "reasonmaxxer-seed1"]
    rm = pieces["reasonmaxxer-seed0"]
    assert rm["schema"] == PIECE_SCHEMA and (rm["method"], rm["seed"]) == ("reasonmaxxer", 0)
    assert rm["commit"] and rm["settings"]["eval_seed"] == 0 and rm["settings"]["grpo_compute_multiples"] == [1, 3]
    assert rm["compute"] == {"wall_s": 100.0, "tokens": 1000.0} and rm["elapsed_s"] >= 0
    assert pieces["base"]["seed"] is None and pieces["base"]["test"]["records"][0]["id"] == "p0"
    assert not (tmp_path / "evidence.json").exists()

    calls.clear()
    crash.clear()
    evidence = run(seeds=[0, 1])
    assert calls == ["grpo_equal-seed1", "grpo_3x-seed1"]  # nothing finished runs again
    assert "reasonmaxxer-seed1: finished earlier, loaded from" in capsys.readouterr().out
    assert evidence["missing"] == [] and len(evidence["pieces"]) == 7
    assert json.loads((tmp_path / "evidence.json").read_text())["paired"] == evidence["paired"]
    for name in ("evidence_table.txt", "evidence_curve.png", "evidence_curve_tokens.png", "evidence_paired.png"):
        assert os.path.getsize(tmp_path / name) > 0

    # one method and one seed at a time: here all of it is done already
    calls.clear()
    assert run(seeds=[1], methods=["grpo_3x"])["missing"] == [] and calls == []


def test_a_piece_made_with_other_settings_is_refused_before_any_work(fake_runs, tmp_path):
    run, calls, _ = fake_runs
    run(seeds=[0], methods=["reasonmaxxer"])
    calls.clear()
    other = CompareConfig(grpo_compute_multiples=[1, 3], eval_seed=0, learning_rate=0.01)
    with pytest.raises(ValueError, match=r"other settings than this run: learning_rate=0.0002 \(this run: 0.01\)"):
        run(seeds=[0], budget=other)
    # without a fixed eval_seed a run of seed 1 alone would sample its evaluations with seed 1
    with pytest.raises(ValueError, match=r"eval_seed=0 \(this run: 1\)"):
        run(seeds=[1], budget=CompareConfig(grpo_compute_multiples=[1, 3]))
    assert calls == []
    (tmp_path / "pieces" / "grpo_equal-seed0.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ValueError, match="is not a comparison piece of schema.*move other files .* out of it"):
        run(seeds=[0])


def test_the_base_piece_is_held_to_its_evaluation_settings_only(fake_runs, tmp_path):
    run, calls, _ = fake_runs
    run(seeds=[0], methods=["reasonmaxxer"])
    (tmp_path / "pieces" / "reasonmaxxer-seed0.json").unlink()
    calls.clear()
    # a training knob chosen again on validation: the base model's hour of evaluation is kept
    retuned = CompareConfig(grpo_compute_multiples=[1, 3], eval_seed=0, learning_rate=0.01, fork_thresholds=[1.4])
    evidence = run(seeds=[0], methods=["reasonmaxxer"], budget=retuned)
    assert calls == ["reasonmaxxer-seed0"]
    assert evidence["settings"]["learning_rate"] == 0.01  # the trained pieces' settings, not the base's
    # an evaluation setting is not a training knob
    with pytest.raises(ValueError, match=r"other settings than this run: num_samples=2 \(this run: 4\)"):
        run(seeds=[0], budget=CompareConfig(grpo_compute_multiples=[1, 3], eval_seed=0, num_samples=4))
    # nor may two trained pieces differ in a training knob
    store = PieceStore(
        str(tmp_path / "pieces"), json.loads((tmp_path / "pieces" / "base.json").read_text())["settings"]
    )
    store.save("reasonmaxxer-seed1", synthetic.result("reasonmaxxer", 1) | {"method": "reasonmaxxer", "seed": 1})
    with pytest.raises(ValueError, match=r"other settings than reasonmaxxer-seed0.json: fork_thresholds=\[\]"):
        PieceStore(str(tmp_path / "pieces")).load_all()


def test_aggregate_only_rebuilds_the_evidence_from_the_pieces_without_a_model(tmp_path, monkeypatch, capsys):
    from trl_reasonmaxxer import evaluation

    monkeypatch.setattr(evaluation, "load_model_for_eval", lambda *a, **k: pytest.fail("a model was loaded"))
    store = PieceStore(str(tmp_path / "pieces"))
    for name, piece in synthetic.all_pieces().items():
        store.settings = piece["settings"]
        store.save(name, {k: v for k, v in piece.items() if k not in ("schema", "settings", "commit")})
    argv = ["compare", "--aggregate_only", "true", "--output_dir", str(tmp_path), "--seeds", "0", "1"]
    cli.main([*argv, "--grpo_compute_multiples", "1", "3"])
    table = capsys.readouterr().out
    assert "missing pieces (1): grpo_3x-seed1" in table and "reasonmaxxer-base: +0.250" in table
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["paired"]["reasonmaxxer-grpo_equal"]["mean"] == pytest.approx(0.1875)
    assert evidence["headline"]["ratio"] == pytest.approx(2400 / 1100)
    for name in ("evidence_table.txt", "evidence_curve.png", "evidence_curve_tokens.png", "evidence_paired.png"):
        assert os.path.getsize(tmp_path / name) > 0
    # pieces must agree with each other too
    store.settings = synthetic.SETTINGS | {"num_samples": 4}
    store.save("grpo_3x-seed1", synthetic.result("grpo_3x", 0) | {"method": "grpo_3x", "seed": 1})
    with pytest.raises(ValueError, match=r"other settings than base.json: num_samples=4 \(base.json: 2\)"):
        cli.main(argv)


@pytest.mark.slow
def test_quick_comparison_runs_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    data = _write_data(tmp_path / "data.jsonl", 10)
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
    assert "1 seed(s) [42]" in table and "reasonmaxxer_random" in table and "headline (wall_s" in table
    for name in ("evidence.json", "evidence_table.txt", "evidence_curve.png", "evidence_curve_tokens.png"):
        assert os.path.getsize(out / name) > 0
    pieces = _pieces(out / "pieces")
    assert set(pieces) == {
        "base",
        "reasonmaxxer-seed42",
        "grpo-seed42",
        "reasonmaxxer_random-seed42",
        "reasonmaxxer_all-seed42",
    }
    splits = pieces["base"]["splits"]
    assert not set(splits["pool"]) & set(splits["test"]) and not set(splits["validation"]) & set(splits["test"])
    grpo_piece = pieces["grpo-seed42"]
    grpo, rm = grpo_piece["ledger"], pieces["reasonmaxxer-seed42"]["ledger"]
    # GRPO: 2 steps × 4 completions of at most 6 tokens; its own token counter (prompt + completion) equals the
    # tokens our hook saw in its (gradient) training forwards
    assert 0 < grpo["token_totals"]["generated"] <= 2 * 4 * 6
    assert (
        grpo["grpo_num_input_tokens_seen"]
        == grpo["token_totals"]["forwarded"]
        == grpo["token_totals"]["backpropagated"]
    )
    assert [p["step"] for p in grpo_piece["validation_curve"]] == [0, 1, 2] and grpo_piece["grpo_budget"] is None
    # ReasonMaxxer: 4 prompts × 4 rollouts, scored without gradient, then policy (grad) + reference (no grad)
    assert 0 < rm["token_totals"]["generated"] <= 4 * 4 * 6
    assert rm["tokens"]["scoring"]["forwarded"] > 0 and rm["tokens"]["scoring"]["backpropagated"] == 0
    assert rm["tokens"]["training"]["forwarded"] == 2 * rm["tokens"]["training"]["backpropagated"]
    for ledger in (grpo, rm):
        assert ledger["seconds"]["training"] > 0 and ledger["seconds"]["evaluation"] > 0
        assert ledger["peak_memory_bytes"] > 0
    # the ablation reuses the seed's cached rollouts and scores, generating and scoring nothing; it is charged the
    # offline phase that filled the cache (recorded beside it), so its cost is comparable
    ablation = pieces["reasonmaxxer_random-seed42"]["ledger"]
    assert ablation["token_totals"]["generated"] == rm["token_totals"]["generated"]
    assert ablation["tokens"]["scoring"]["forwarded"] == rm["tokens"]["scoring"]["forwarded"]
    assert list((out / "seed42" / "reasonmaxxer" / "rollouts").glob("*/offline_cost.json"))
    assert pieces["reasonmaxxer_random-seed42"]["fork_choice"] == pieces["reasonmaxxer-seed42"]["fork_choice"] == {}
    evidence = json.loads((out / "evidence.json").read_text())
    assert set(evidence["headline_by_unit"]) == {"wall_s", "tokens"} and evidence["missing"] == []
    # which engine each phase used (no GGUF for the tiny model: transformers everywhere), also in the table
    both = {"rollouts": "transformers", "evaluation": "transformers"}
    assert grpo_piece["engines"] == pieces["reasonmaxxer-seed42"]["engines"] == both
    assert evidence["methods"]["base"]["engines"] == {"evaluation": "transformers"}
    assert "engines: base evaluation transformers; reasonmaxxer rollouts transformers" in table


@pytest.mark.slow
def test_evidence_in_pieces_on_the_tiny_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """GRPO at 1× and 3× ReasonMaxxer's token compute, a two-setting fork sweep and a transfer task, run in two
    sittings (ReasonMaxxer first, then the rest: the finished pieces are loaded, not run again), then aggregated
    again without a model."""
    data = _write_data(tmp_path / "data.jsonl", 10)
    transfer = _write_data(tmp_path / "transfer.jsonl", 3, offset=20)
    out = tmp_path / "out"
    argv = ["compare", "--quick", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data)]
    argv += ["--reward_func", "tests.helpers.alternating_reward", "--max_completion_length", "4"]
    argv += ["--output_dir", str(out), "--seeds", "0", "--eval_seed", "0", "--grpo_compute_multiples", "1", "3"]
    argv += ["--grpo_eval_every", "1000", "--fork_thresholds", "1.0", "--fork_fractions", "0.5"]
    argv += ["--transfer_dataset_name", str(transfer), "--num_transfer_problems", "3"]
    cli.main([*argv, "--methods", "reasonmaxxer"])
    assert "missing pieces (2): grpo_equal-seed0, grpo_3x-seed0" in capsys.readouterr().out
    rm = json.loads((out / "pieces" / "reasonmaxxer-seed0.json").read_text())
    assert [c["fork"] for c in rm["fork_sweep"]] == [{"fork_threshold": 1.0}, {"fork_fraction": 0.5}]
    assert rm["fork_choice"] == {"fork_threshold": 1.0}  # the alternating reward ties them: the first is kept
    assert rm["sweep_compute"]["tokens"] > rm["compute"]["tokens"] > 0
    # the second setting trained on the first one's cached pool (one cache, generated once: what it cost is what the
    # first setting's ledger shows), and was charged that offline phase
    (cost_file,) = (out / "seed0" / "reasonmaxxer" / "rollouts").glob("*/offline_cost.json")
    cost = json.loads(cost_file.read_text())
    assert cost["tokens"]["generation"]["generated"] == rm["ledger"]["token_totals"]["generated"] > 0
    assert rm["fork_sweep"][1]["compute"]["tokens"] == pytest.approx(rm["fork_sweep"][0]["compute"]["tokens"], rel=0.5)
    assert rm["transfer"]["summary"]["num_problems"] == 3 and rm["test"]["summary"]["greedy"]
    assert "completions" not in rm["test"]["records"][0] and "validation" in rm
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "pieces").iterdir()}

    cli.main(argv)
    printed = capsys.readouterr().out
    assert "base: finished earlier" in printed and "reasonmaxxer-seed0: finished earlier" in printed
    assert all((out / "pieces" / name).stat().st_mtime_ns == t for name, t in stamps.items())
    for method, multiple in (("grpo_equal", 1), ("grpo_3x", 3)):
        piece = json.loads((out / "pieces" / f"{method}-seed0.json").read_text())
        budget = piece["grpo_budget"]
        assert budget["target_tokens"] == pytest.approx(multiple * rm["compute"]["tokens"])
        assert budget["max_steps"] == grpo_steps_for_budget(budget["target_tokens"], budget["tokens_per_step"])
        assert piece["ledger"]["steps"] == budget["max_steps"] == piece["validation_curve"][-1]["step"]
        assert budget["realized_tokens"] == pytest.approx(piece["compute"]["tokens"])
        assert piece["transfer"]["summary"]["num_problems"] == 3
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["missing"] == [] and evidence["transfer_task"] == str(transfer)
    for key in REQUIRED_PAIRS:
        for group in ("paired", "transfer"):
            lo, hi = evidence[group][key]["ci95"]
            assert lo <= evidence[group][key]["mean"] <= hi
    assert evidence["transfer"]["grpo_3x-base"]["n"] == 3 and evidence["headline"]["grpo_method"] == "grpo_3x"

    from trl_reasonmaxxer import evaluation

    monkeypatch.setattr(evaluation, "load_model_for_eval", lambda *a, **k: pytest.fail("a model was loaded"))
    (out / "evidence.json").unlink()
    cli.main([*argv, "--aggregate_only", "true"])
    again = json.loads((out / "evidence.json").read_text())
    assert again["paired"] == evidence["paired"] and again["methods"] == evidence["methods"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_quick_comparison_with_llama_cpp_everywhere(tiny_model_dir, tmp_path, capsys):
    """``--use_llama_cpp true --grpo_use_llama_cpp true``: every evaluation, ReasonMaxxer's rollouts and GRPO's
    rollouts (TRL's rollout_func, the LoRA exported every step) sample with llama.cpp, and the evidence says so."""
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
    evidence = json.loads((out / "evidence.json").read_text())
    both = {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}
    assert evidence["methods"]["grpo"]["engines"] == both
    assert evidence["methods"]["reasonmaxxer"]["engines"] == both
    assert evidence["methods"]["base"]["engines"] == {"evaluation": "llama.cpp"}
    assert evidence["settings"]["grpo_use_llama_cpp"] is True
    grpo = json.loads((out / "pieces" / "grpo-seed42.json").read_text())
    assert 0 < grpo["ledger"]["token_totals"]["generated"] <= 2 * 4 * 4


def _runner(tmp_path, budget=None, settings=None):
    from trl_reasonmaxxer.benchmarking import compare

    settings = settings or {"learning_rate": 1e-4}
    return compare._Runner("m", {}, budget or CompareConfig(), None, str(tmp_path), 0, settings)


def test_a_sweep_cut_short_resumes_at_the_fork_setting_it_was_training(tmp_path, monkeypatch, caplog):
    from trl_reasonmaxxer.benchmarking import compare

    trained = []

    def train(self, seed, gate, fork, with_validation, overrides=None, extra_pool=None):
        trained.append(fork["fork_threshold"])
        adapter = tmp_path / f"seed{seed}" / f"reasonmaxxer-{gate}-threshold{fork['fork_threshold']:g}" / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
        return {"fork": fork, "adapter": str(adapter), "validation": {"summary": {"pass@1": len(trained) / 10}}}

    monkeypatch.setattr(compare._Runner, "train_reasonmaxxer", train)
    first = _runner(tmp_path)
    done = [first.trained_reasonmaxxer(0, "entropy", {"fork_threshold": t}, True) for t in (1.2, 1.4)]
    assert trained == [1.2, 1.4]
    again = _runner(tmp_path)  # the sweep run again after a stop while 1.6 trained
    redone = [again.trained_reasonmaxxer(0, "entropy", {"fork_threshold": t}, True) for t in (1.2, 1.4, 1.6)]
    assert trained == [1.2, 1.4, 1.6] and redone[:2] == done
    # not trusted: other settings, another seed, a missing adapter, a damaged record
    _runner(tmp_path, settings={"learning_rate": 2e-4}).trained_reasonmaxxer(
        0, "entropy", {"fork_threshold": 1.2}, True
    )
    assert trained[-1] == 1.2 and "is not reused: it was made with other settings" in caplog.text
    _runner(tmp_path).trained_reasonmaxxer(1, "entropy", {"fork_threshold": 1.4}, True)
    assert trained[-1] == 1.4
    (tmp_path / "seed0" / "reasonmaxxer-entropy-threshold1.6" / "run.json").write_text('{"run_key": ')
    _runner(tmp_path).trained_reasonmaxxer(0, "entropy", {"fork_threshold": 1.6}, True)
    assert trained[-1] == 1.6 and "run.json is not reused: it cannot be read" in caplog.text


def test_fork_choice_seed_makes_the_other_seeds_train_its_choice_only(tmp_path, monkeypatch):
    from trl_reasonmaxxer.benchmarking import compare

    calls, transfers = [], []
    monkeypatch.setattr(
        compare._Runner,
        "run_reasonmaxxer",
        lambda self, seed, gate, forks, with_validation, with_transfer=True: (
            calls.append((seed, forks)) or transfers.append((gate, with_transfer)) or {"fork_choice": forks[0]}
        ),
    )
    settings = {"learning_rate": 1e-4}
    runner = _runner(tmp_path, CompareConfig(fork_thresholds=[1.2, 1.4], fork_choice_seed=0), settings)
    store = PieceStore(str(tmp_path / "pieces"), settings)
    with pytest.raises(ValueError, match=r"needs .*reasonmaxxer-seed0.json .*run `--methods reasonmaxxer --seeds 0`"):
        runner.run_piece("reasonmaxxer", 1, None, store)
    runner.run_piece("reasonmaxxer", 0, None, store)
    assert calls == [(0, [{"fork_threshold": 1.2}, {"fork_threshold": 1.4}])]
    store.save(
        "reasonmaxxer-seed0", {"method": "reasonmaxxer", "seed": 0, "test": {}, "fork_choice": {"fork_threshold": 1.4}}
    )
    assert runner.run_piece("reasonmaxxer", 2, None, store)["fork_choice_seed"] == 0
    assert calls[-1] == (2, [{"fork_threshold": 1.4}])
    runner.run_piece("reasonmaxxer_random", 0, None, store)
    assert calls[-1] == (0, [{"fork_threshold": 1.4}])
    # the gate ablation is a diagnosis on the training task: evaluated on test only
    assert transfers == [("entropy", True), ("entropy", True), ("random", False)]


def _tiny_comparison(tmp_path, **budget):
    """A budget for the tiny model (4 pool problems × 4 completions of ≤ 5 tokens, 2 validation, 2 test) and its
    splits of 10 problems."""
    from trl_reasonmaxxer.benchmarking import compare

    data = _write_data(tmp_path / "data.jsonl", 10)
    sizes = dict(num_pool_problems=4, num_validation_problems=2, num_test_problems=2, num_generations=4)
    budget = CompareConfig(**sizes, max_completion_length=5, learning_rate=1e-2, **budget)
    return budget, compare.load_splits(str(data), budget, 0)


def _stop_at(monkeypatch, cls, method: str, step: int) -> dict:
    """Make ``cls.method`` raise OSError("stopped") once the trainer reaches ``step`` (a run cut short); set the
    returned ``{"at": step}`` to None to let it run on."""
    stop, real = {"at": step}, getattr(cls, method)

    def stopping(self, *args, **kwargs):
        if self.state.global_step == stop["at"]:
            raise OSError("stopped")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, stopping)
    return stop


def test_a_reasonmaxxer_training_cut_short_resumes_from_its_last_checkpoint(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """ReasonMaxxer's training checkpoints into its own run folder (the seed's rollouts stay shared): stopped during
    step 3 of 4 with a checkpoint every 2 steps, it resumes at step 2 from the cached pool and ends with the weights,
    losses and token count of a run that was never stopped; the finished run keeps its adapter and run.json only."""
    import torch
    from safetensors.torch import load_file

    from tests.helpers import alternating_reward
    from trl_reasonmaxxer.benchmarking import compare
    from trl_reasonmaxxer.trainer import ReasonMaxxerTrainer

    monkeypatch.setattr(compare, "REASONMAXXER_SAVE_STEPS", 2)
    budget, splits = _tiny_comparison(tmp_path)
    stop = _stop_at(monkeypatch, ReasonMaxxerTrainer, "training_step", 2)
    overrides = {"gradient_accumulation_steps": 2}  # 8 pairs: 4 steps

    def train(out):
        runner = compare._Runner(tiny_model_dir, splits, budget, alternating_reward, str(tmp_path / out), 0, {"k": 1})
        return runner.trained_reasonmaxxer(0, "entropy", {}, False, overrides)

    with pytest.raises(OSError, match="stopped"):
        train("cut")
    folder = tmp_path / "cut" / "seed0" / "reasonmaxxer-entropy-gradient_accumulation_steps2"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-2"]
    progress = json.loads((folder / "checkpoint-2" / "progress.json").read_text())
    assert progress["step"] == 2 and set(progress["ledger"]["seconds"]) == {"training"}
    assert list((tmp_path / "cut" / "seed0" / "reasonmaxxer" / "rollouts").glob("*/offline_cost.json"))
    stop["at"] = None
    resumed = train("cut")
    assert "reasonmaxxer entropy-gradient_accumulation_steps2, seed 0: resuming at step 2" in capsys.readouterr().out
    whole = train("whole")
    assert resumed["ledger"]["resumed_from_step"] == 2 and "resumed_from_step" not in whole["ledger"]
    # the cached pool's offline cost and the steps before the checkpoint (from its progress) are each counted once
    assert resumed["ledger"]["token_totals"] == whole["ledger"]["token_totals"]
    before = progress["ledger"]["tokens"]["training"]["forwarded"]
    assert 0 < before < resumed["ledger"]["tokens"]["training"]["forwarded"]
    losses = [[h["loss"] for h in r["log_history"] if "loss" in h] for r in (resumed, whole)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    weights = [load_file(os.path.join(r["adapter"], "adapter_model.safetensors")) for r in (resumed, whole)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
    assert not list(folder.glob("checkpoint-*")) and (folder / "run.json").exists()


def test_a_grpo_run_cut_short_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """GRPO saves a checkpoint with its ledger and curve every `grpo_eval_every` steps: a run stopped at step 3
    resumes at step 2 and ends with the weights, curve and token count of a run that was never stopped; the finished
    run leaves its adapter and run.json (no checkpoints), and a later call evaluates that adapter without training."""
    import torch
    from safetensors.torch import load_file
    from trl import GRPOTrainer

    from tests.helpers import alternating_reward
    from trl_reasonmaxxer.benchmarking import compare

    budget, splits = _tiny_comparison(
        tmp_path, num_samples=1, num_validation_samples=1, grpo_max_steps=4, grpo_eval_every=2
    )
    base = {"validation": {"summary": {"pass@1": 0.5}}}
    stop = _stop_at(monkeypatch, GRPOTrainer, "_generate_and_score_completions", 3)

    def runner(out):
        return compare._Runner(tiny_model_dir, splits, budget, alternating_reward, str(tmp_path / out), 0, {"k": 1})

    with pytest.raises(OSError, match="stopped"):
        runner("cut").run_grpo(0, "grpo", base)
    folder = tmp_path / "cut" / "seed0" / "grpo"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-2"]
    progress = json.loads((folder / "checkpoint-2" / "progress.json").read_text())
    assert [p["step"] for p in progress["curve"]] == [0, 2]
    stop["at"] = None
    resumed = runner("cut").run_grpo(0, "grpo", base)
    assert "grpo, seed 0: resuming at step 2" in capsys.readouterr().out
    whole = runner("whole").run_grpo(0, "grpo", base)
    assert [p["step"] for p in resumed["validation_curve"]] == [0, 2, 4] and resumed["ledger"]["steps"] == 4
    assert resumed["ledger"]["resumed_from_step"] == 2 and "resumed_from_step" not in whole["ledger"]
    # each step's tokens are counted once: the steps before the checkpoint (from its progress) and after it
    assert resumed["ledger"]["token_totals"] == whole["ledger"]["token_totals"]
    assert progress["ledger"]["tokens"]["generation"]["generated"] < resumed["ledger"]["token_totals"]["generated"]
    assert resumed["test"]["records"] == whole["test"]["records"]
    weights = [
        load_file(tmp_path / d / "seed0" / "grpo" / "adapter" / "adapter_model.safetensors") for d in ("cut", "whole")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
    assert not list(folder.glob("checkpoint-*")) and (folder / "run.json").exists()
    assert list((folder / "final_evaluation" / "test").rglob("chunk-*.jsonl"))

    monkeypatch.setattr(compare._Runner, "train_grpo", lambda *a, **k: pytest.fail("trained again"))
    again = runner("cut").run_grpo(0, "grpo", base)
    assert "grpo, seed 0: trained earlier" in capsys.readouterr().out
    assert again["test"]["records"] == resumed["test"]["records"]
    assert again["test"]["summary"]["chunks"] == {"total": 1, "reused": 1}
    assert again["ledger"] == resumed["ledger"]
