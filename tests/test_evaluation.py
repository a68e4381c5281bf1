import itertools
import json
import math
import statistics
from collections import Counter

import pytest
from datasets import Dataset

from trl_reasonmaxxer import evaluation
from trl_reasonmaxxer.evaluation import (
    avg_at_k,
    check_adapter,
    check_model_path,
    evaluate,
    load_model_for_eval,
    maj_at_k,
    mean_and_stderr,
    pass_at_k,
    plot_comparison,
    save_results,
)
from trl_reasonmaxxer.rewards import canonical_answer


# ---------------------------------------------------------------------------------------------------------
# Pure metrics


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every 3-subset holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # large n: no overflow, equal to the exact binomial ratio
    assert pass_at_k(1000, 100, 50) == pytest.approx(1 - math.comb(900, 50) / math.comb(1000, 50), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)])
def test_pass_at_k_rejects_bad_input(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "answers, correct, k, expected",
    [
        (["a", "b", "a"], [False, True, False], 3, 0.0),  # clear majority, wrong
        (["b", "a", "a", "b"], [True, False, False, True], 4, 1.0),  # tie 2-2: "b" occurs first
        (["a", "b", "b", "a"], [False, True, True, False], 4, 0.0),  # tie 2-2: "a" occurs first
        (["b", "a", "a", "b"], [True, False, False, True], 3, 0.0),  # only the first k vote
        ([None, None, "x"], [False, False, True], 3, 1.0),  # None does not vote
        ([None, None, "x", "y", "y"], [False, False, False, True, True], 5, 1.0),
        ([None, None], [False, False], 2, 0.0),  # nothing voted
        (["7"], [True], 1, 1.0),
    ],
)
def test_maj_at_k(answers, correct, k, expected):
    assert maj_at_k(answers, correct, k) == expected


def test_maj_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="one per sample"):
        maj_at_k(["a"], [True, False], 1)
    with pytest.raises(ValueError, match="1 <= k <= 2"):
        maj_at_k(["a", "b"], [True, False], 3)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True], 2) == 0.5
    assert avg_at_k([True, False, True, True], 4) == 0.75
    with pytest.raises(ValueError):
        avg_at_k([True], 2)


def test_mean_and_stderr():
    assert mean_and_stderr([0.7]) == (0.7, 0.0)
    assert mean_and_stderr([0.0, 1.0]) == pytest.approx((0.5, 0.5))  # sd sqrt(0.5), / sqrt(2)
    mean, se = mean_and_stderr([1, 2, 3, 4])
    assert (mean, se) == pytest.approx((2.5, math.sqrt(5 / 3) / 2))
    with pytest.raises(ValueError):
        mean_and_stderr([])


# ---------------------------------------------------------------------------------------------------------
# Evaluation loop on the tiny model

MAX_NEW_TOKENS = 8
NUM_SAMPLES = 4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, PreTrainedTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture
def dataset():
    questions = ["what is 1 plus 1 ?", "what is 2 plus 2 ?", "what is 3 plus 4 ?"]
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": q}] for q in questions],
            "solution": ["2", "4", "ungradable"],
            "id": ["p0", "p1", "p2"],
        }
    )


def stub_reward(prompts, completions, completion_ids, solution, id, **kwargs):
    """Correct iff the sum of the completion's token ids is even; None for the 'ungradable' problem."""
    assert len(prompts) == len(completions) == len(completion_ids) == len(solution) == len(id)
    assert all(c[0]["role"] == "assistant" for c in completions)  # conversational, as GRPOTrainer passes them
    return [None if s == "ungradable" else float(sum(ids) % 2 == 0) for s, ids in zip(solution, completion_ids)]


@pytest.fixture
def last_word_answers(monkeypatch):
    """The tiny model cannot write \\boxed{}: take the last word as the answer, so maj@k has votes to count."""
    monkeypatch.setattr(evaluation, "extract_answer", lambda text: text.split()[-1] if text.split() else None)


def run(model, tokenizer, dataset, **kwargs):
    kwargs = dict(num_samples=NUM_SAMPLES, max_new_tokens=MAX_NEW_TOKENS, reward_fn=stub_reward, seed=3) | kwargs
    return evaluate(model, tokenizer, dataset, batch_size=8, **kwargs)


def test_grading_calls_rewards_as_training_does(dataset):
    """Evaluation's reward call is training's (rewards.call_reward_funcs): async functions are awaited, NaN is an
    ungradable completion like None, only-ungradable is allowed, and a failing function is named."""
    from trl_reasonmaxxer.testing import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    rows = list(dataset)
    groups = [[{"completion_ids": tokenizer.encode("1 plus 1"), "truncated": False}] for _ in rows]

    async def async_reward(completions, solution, **kwargs):
        assert completions[0][0]["role"] == "assistant"  # conversational, as the prompts are
        return [1.0, float("nan"), None]

    graded = [g for (g,) in evaluation.grade_completions(rows, groups, tokenizer, async_reward)]
    assert [g["reward"] for g in graded] == [1.0, None, None] and [g["correct"] for g in graded] == [
        True,
        False,
        False,
    ]
    assert graded[0]["text"] == "1 plus 1"
    ungradable = evaluation.grade_completions(rows, groups, tokenizer, lambda completions, **kw: [None] * 3)
    assert [g["reward"] for (g,) in ungradable] == [None] * 3

    def broken(completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match=r"Reward function 'broken' raised KeyError: 'answer'\.$"):
        evaluation.grade_completions(rows, groups, tokenizer, broken)


def test_evaluate_metrics_match_the_records(tiny, dataset, last_word_answers):
    results = run(*tiny, dataset)
    json.dumps(results)  # serialisable as is
    s, records = results["summary"], results["records"]
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    assert (s["num_problems"], s["num_samples"], s["temperature"], s["top_p"]) == (3, NUM_SAMPLES, 0.6, 0.95)

    for r in records:
        assert len(r["correct"]) == len(r["answers"]) == len(r["rewards"]) == NUM_SAMPLES
        assert r["num_correct"] == sum(r["correct"])
        assert r["correct"] == [x == 1.0 for x in r["rewards"]]
        assert all(t == MAX_NEW_TOKENS for t, tr in zip(r["completion_tokens"], r["truncated"]) if tr)
    assert records[2]["rewards"] == [None] * NUM_SAMPLES and records[2]["greedy_reward"] is None
    assert 0 < sum(r["num_correct"] for r in records[:2]) < 2 * NUM_SAMPLES  # the stub gives mixed results

    def check(name, per_problem):
        assert s[name] == pytest.approx(statistics.mean(per_problem)), name
        assert s[f"{name}_stderr"] == pytest.approx(statistics.stdev(per_problem) / math.sqrt(3)), name

    check("pass@1", [r["num_correct"] / NUM_SAMPLES for r in records])
    check("pass@2", [brute_pass_at_k(NUM_SAMPLES, r["num_correct"], 2) for r in records])
    check("pass@4", [float(r["num_correct"] > 0) for r in records])

    def majority_correct(r):
        keys = [canonical_answer(a) for a in r["answers"]]
        votes = Counter(k for k in keys if k is not None)
        if not votes:
            return 0.0
        winner = next(k for k in keys if k is not None and votes[k] == max(votes.values()))
        return float(r["correct"][keys.index(winner)])

    check("maj@4", [majority_correct(r) for r in records])
    check("greedy_accuracy", [float(r["greedy_correct"]) for r in records])

    samples = [(a, t, tr) for r in records for a, t, tr in zip(r["answers"], r["completion_tokens"], r["truncated"])]
    assert s["extraction_rate"] == pytest.approx(sum(a is not None for a, _, _ in samples) / len(samples))
    assert s["mean_completion_tokens"] == pytest.approx(statistics.mean(t for _, t, _ in samples))
    assert s["truncation_rate"] == pytest.approx(sum(tr for _, _, tr in samples) / len(samples))
    assert (s["num_ungradable"], s["greedy_num_ungradable"]) == (NUM_SAMPLES, 1)
    assert s["greedy_extraction_rate"] == pytest.approx(sum(r["greedy_answer"] is not None for r in records) / 3)
    assert s["wall_time_s"] > 0


def test_evaluate_is_seeded_and_keeps_texts(tiny, dataset):
    a = run(*tiny, dataset, return_completions=True)
    b = run(*tiny, dataset)
    assert [r["correct"] for r in a["records"]] == [r["correct"] for r in b["records"]]
    assert all(len(r["completions"]) == NUM_SAMPLES and "greedy_completion" in r for r in a["records"])
    assert "completions" not in b["records"][0]


def test_evaluate_greedy_only_and_bad_arguments(tiny, dataset):
    s = run(*tiny, dataset, num_samples=0)["summary"]
    assert "greedy_accuracy" in s and not any(k.startswith(("pass@", "maj@")) for k in s)
    with pytest.raises(ValueError, match="at least one completion"):
        run(*tiny, dataset, num_samples=0, greedy=False)
    with pytest.raises(ValueError, match=r"needs the columns \['solution'\]"):
        run(*tiny, dataset.remove_columns("solution"))


def test_evaluation_stopped_mid_way_resumes_at_its_first_missing_chunk(tiny, dataset, tmp_path, monkeypatch):
    """With resume_dir each chunk is kept as it ends: a run stopped in its last chunk is resumed by generating that
    chunk alone, and gives what an uninterrupted run gives; another model (resume_key) or setting reuses nothing."""
    calls = []
    real = evaluation.generate_completions

    def counting(model, tokenizer, prompt_ids, **kwargs):
        calls.append(len(prompt_ids))
        return real(model, tokenizer, prompt_ids, **kwargs)

    monkeypatch.setattr(evaluation, "generate_completions", counting)

    stop = {"at": "p2"}

    def stopped(prompts, completions, completion_ids, solution, id, **kwargs):
        if stop["at"] in id:
            raise OSError("stopped")
        return stub_reward(prompts, completions, completion_ids, solution, id)

    resumable = dict(resume_dir=str(tmp_path / "eval"), resume_key="adapter-a", chunk_problems=1)
    with pytest.raises(RuntimeError, match="stopped"):
        run(*tiny, dataset, reward_fn=stopped, **resumable)
    assert calls == [1, 1, 1, 1, 1]  # p0 and p1 (samples, greedy), then p2's samples
    calls.clear()
    stop["at"] = None
    resumed = run(*tiny, dataset, reward_fn=stopped, **resumable)
    assert calls == [1, 1] and resumed["summary"]["chunks"] == {"total": 3, "reused": 2}
    fresh = run(*tiny, dataset, reward_fn=stopped, **(resumable | {"resume_dir": str(tmp_path / "fresh")}))
    assert resumed["records"] == fresh["records"]
    assert {k: v for k, v in resumed["summary"].items() if k not in ("wall_time_s", "chunks")} == {
        k: v for k, v in fresh["summary"].items() if k not in ("wall_time_s", "chunks")
    }
    calls.clear()
    run(*tiny, dataset, reward_fn=stopped, **(resumable | {"resume_key": "adapter-b"}))
    run(*tiny, dataset, reward_fn=stopped, max_new_tokens=MAX_NEW_TOKENS - 1, **resumable)
    assert len(calls) == 12  # nothing reused: 2 runs x 3 chunks x (samples, greedy)


def test_a_damaged_evaluation_chunk_is_made_again(tiny, dataset, tmp_path, caplog):
    resumable = dict(resume_dir=str(tmp_path), resume_key="k", chunk_problems=2)
    first = run(*tiny, dataset, **resumable)
    (chunk,) = list(tmp_path.rglob("chunk-00000.jsonl"))
    chunk.write_text("{not json")
    again = run(*tiny, dataset, **resumable)
    assert again["summary"]["chunks"] == {"total": 2, "reused": 1} and again["records"] == first["records"]
    assert "unreadable cache chunk" in caplog.text
    with pytest.raises(ValueError, match="chunk_problems must be >= 1"):
        run(*tiny, dataset, chunk_problems=0, **{k: v for k, v in resumable.items() if k != "chunk_problems"})


def test_evaluate_with_the_math_reward(tiny, dataset):
    """The default reward on a model that never writes an answer: everything wrong, nothing extracted."""
    s = evaluate(*tiny, dataset.select(range(2)), num_samples=2, max_new_tokens=4, batch_size=8)["summary"]
    assert (s["pass@1"], s["greedy_accuracy"], s["extraction_rate"]) == (0.0, 0.0, 0.0)


def test_load_model_for_eval_with_a_lora_adapter(tiny_model_dir, tmp_path, tiny, dataset):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter_dir = str(tmp_path / "adapter")
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(adapter_dir)

    model, tokenizer = load_model_for_eval(tiny_model_dir, adapter_dir, device="cpu")
    assert isinstance(model, PeftModel) and not model.training
    # a fresh LoRA starts at B = 0, so base + adapter must score exactly like the base
    with_adapter = run(model, tokenizer, dataset)["records"]
    base = run(*tiny, dataset)["records"]
    assert [r["correct"] for r in with_adapter] == [r["correct"] for r in base]

    with pytest.raises(ValueError, match="Unknown dtype 'float17'"):
        load_model_for_eval(tiny_model_dir, dtype="float17")


# ---------------------------------------------------------------------------------------------------------
# Bad model and adapter paths (checked before any evaluation)


def save_adapter(model_dir, folder, target_modules=("q_proj", "v_proj")) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=list(target_modules))).save_pretrained(str(folder))
    return str(folder)


def test_check_adapter_names_what_is_wrong(tiny_model_dir, tmp_path):  # D-3
    good = save_adapter(tiny_model_dir, tmp_path / "good")
    check_adapter(good, tiny_model_dir)
    with pytest.raises(FileNotFoundError, match=r"Adapter folder 'nope' does not exist"):
        check_adapter("nope", tiny_model_dir)
    with pytest.raises(ValueError, match=r"is a full model folder, not a PEFT adapter.*--model"):
        check_adapter(tiny_model_dir, tiny_model_dir)
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no adapter_config.json.*Its checkpoints \(checkpoint-2\)"):
        check_adapter(str(tmp_path / "run"), tiny_model_dir)
    broken = save_adapter(tiny_model_dir, tmp_path / "broken")
    (tmp_path / "broken" / "adapter_config.json").write_text('{"peft_type": "LO')
    with pytest.raises(ValueError, match=r"adapter_config.json cannot be read"):
        check_adapter(broken, tiny_model_dir)
    unsaved = save_adapter(tiny_model_dir, tmp_path / "unsaved")
    (tmp_path / "unsaved" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"has no adapter_model.safetensors"):
        check_adapter(unsaved, tiny_model_dir)


def test_check_adapter_refuses_an_adapter_of_another_base(tiny_model_dir, tmp_path):  # D-3
    from transformers import AutoConfig, AutoModelForCausalLM

    from trl_reasonmaxxer.testing import make_tiny_tokenizer

    wider = AutoConfig.for_model(
        "llama",
        vocab_size=len(make_tiny_tokenizer()),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    AutoModelForCausalLM.from_config(wider).save_pretrained(str(tmp_path / "wider"))
    adapter = save_adapter(str(tmp_path / "wider"), tmp_path / "adapter")
    with pytest.raises(
        ValueError, match=r"does not fit the model .*q_proj.lora_A.weight is \(2, 32\) in the adapter "
    ):
        check_adapter(adapter, tiny_model_dir)
    with pytest.raises(ValueError, match=r"does not fit the model"):  # load_model_for_eval checks first too
        load_model_for_eval(tiny_model_dir, adapter, device="cpu")


def test_check_model_path(tiny_model_dir, tmp_path):  # L5
    check_model_path(tiny_model_dir)
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct")  # a Hub id passes through
    with pytest.raises(FileNotFoundError, match=r"Model folder '/no/such/dir' does not exist"):
        check_model_path("/no/such/dir")
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"has no config.json.*It is a PEFT adapter: pass it as --adapter"):
        check_model_path(adapter)


def test_eval_cli_checks_adapters_before_the_base_evaluation_and_saves_each_model(
    tiny_model_dir, tmp_path, monkeypatch
):  # D-3, L6
    from trl_reasonmaxxer import cli

    calls = []

    def fake_evaluate(model, tokenizer, data, desc, **kwargs):
        calls.append(desc)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (stand-in)")
        return {"summary": {"pass@1": 0.5, "pass@1_stderr": 0.1, "engine": "transformers"}, "records": []}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "load_model_for_eval", lambda model, adapter: (None, None))
    out = tmp_path / "ev"
    argv = ["eval", "--model_name_or_path", tiny_model_dir, "--num_problems", "2", "--output_dir", str(out)]
    good = save_adapter(tiny_model_dir, tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="'nope' does not exist"):
        cli.main([*argv, "--adapter", good, "nope"])
    assert calls == [] and not out.exists()
    with pytest.raises(RuntimeError, match="stand-in"):
        cli.main([*argv, "--adapter", good])
    assert calls == ["base", good]
    assert list(json.loads((out / "eval.json").read_text())) == ["base"]  # the base evaluation is kept


# ---------------------------------------------------------------------------------------------------------
# Saving and plotting


def test_save_results_and_plot_comparison(tmp_path):
    results = {
        "base": {"summary": {"pass@1": 0.4, "pass@1_stderr": 0.05, "num_problems": 20}, "records": []},
        "reasonmaxxer": {"summary": {"pass@1": 0.55, "pass@1_stderr": 0.06, "num_problems": 20}, "records": []},
    }
    path = save_results(results["base"], str(tmp_path / "out" / "base.json"))
    with open(path) as f:
        assert json.load(f) == results["base"]

    png = plot_comparison(results, str(tmp_path / "plots" / "pass1.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no metric 'maj@8'; it has: pass@1"):
        plot_comparison(results, str(tmp_path / "x.png"), metric="maj@8")
