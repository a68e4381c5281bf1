"""The llama.cpp generation engine (the ``cpu`` extra) on a tiny float32 GGUF written from the tiny test model.

CI installs the extra (``make install-dev``), so there these tests run; elsewhere they skip when it is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types

import pytest
import torch
from datasets import Dataset

from trl_reasonmaxxer import llama_engine
from trl_reasonmaxxer.llama_engine import (
    GGUFNotFoundError,
    LlamaCppUnavailableError,
    admit,
    check_gguf_path,
    compaction_moves,
    context_cells,
    make_requests,
    resolve_llama_cpp,
)
from trl_reasonmaxxer.rollouts import generate_completions, tokenize_prompt
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer, save_tiny_gguf


if importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"):
    needs_llama = pytest.mark.skip(reason=f"llama-cpp-python is not installed ({llama_engine.INSTALL_HINT})")
else:
    needs_llama = pytest.mark.filterwarnings("ignore")

WORDS = ["what is 1 plus 1 ?", "what is 3 plus 4 ?", "solve step by step", "the answer is", "2 times 3 equals"]


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Every test sees the engine's one-time lines again."""
    monkeypatch.setattr(llama_engine, "_ANNOUNCED", set())


# ---------------------------------------------------------------------------------------------------------
# Pure helpers


def test_make_requests_seeds_per_prompt_and_sample():
    reqs = make_requests(2, 3, seed=10, prompt_indices=[5, 7])
    assert [(r.prompt, r.sample) for r in reqs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [r.seed for r in reqs] == [25, 26, 27, 31, 32, 33]  # seed + index * n + j, as the vLLM backend
    assert all(r.seed is None for r in make_requests(2, 2, seed=None))
    with pytest.raises(ValueError, match="prompt indices"):
        make_requests(2, 1, 0, prompt_indices=[0])


def test_admit_fills_lowest_free_slots_in_queue_order():
    assert admit(5, [3, 1]) == [(0, 1), (1, 3)]
    assert admit(1, [2, 0, 1]) == [(0, 0)]
    assert admit(0, [0]) == []


def test_compaction_moves_make_live_slots_consecutive():
    assert compaction_moves([0, 1, 2]) == []
    assert compaction_moves([0, 2, 5]) == [(5, 1)]
    assert compaction_moves([3, 4]) == [(4, 0), (3, 1)]
    for live in ([1, 3, 6, 7], [7], [0, 5, 6, 2]):
        after = set(live)
        for src, dst in compaction_moves(live):
            after.remove(src)
            after.add(dst)
        assert after == set(range(len(live)))


def test_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(llama_engine, "busy_cores", lambda: 0.1)
    assert llama_engine.free_threads(limit=2)[0] == 2
    monkeypatch.setattr(llama_engine, "busy_cores", lambda: 0.9)
    assert llama_engine.free_threads(limit=2)[0] == 1
    monkeypatch.setattr(llama_engine, "busy_cores", lambda: 3.5)
    assert llama_engine.free_threads(limit=2)[0] == 1  # never fewer than one
    monkeypatch.setattr(llama_engine, "busy_cores", lambda: None)
    assert llama_engine.free_threads(limit=2)[0] == 2
    assert llama_engine.describe_threads(3) == "n_threads=3"


def test_busy_cores_reads_proc_stat():
    busy = llama_engine.busy_cores(interval=0.05) if os.path.exists("/proc/stat") else None
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_this_processes_own_threads_are_not_other_work():
    # 2 cores over 100 ticks each: 200 ticks, 50 idle; 100 of the 150 busy ticks are this process's (torch's
    # spinning OpenMP threads after an operation): only 50 are other work, a quarter of the machine
    before, after = (1000, 500, 10), (1200, 550, 110)
    assert llama_engine.other_busy_cores(before, after, cores=2) == pytest.approx(0.5)
    assert llama_engine.other_busy_cores(before, (1200, 550, 200), cores=2) == 0.0  # never negative
    assert llama_engine.other_busy_cores(before, before, cores=2) is None


def test_context_cells_padded():
    assert context_cells([10, 30], 200) == 256
    assert context_cells([100], 200) == 512


# ---------------------------------------------------------------------------------------------------------
# Errors that need no llama.cpp


def test_bad_paths_are_clear(tmp_path):
    with pytest.raises(GGUFNotFoundError, match="does not exist"):
        check_gguf_path(tmp_path / "missing.gguf")
    with pytest.raises(GGUFNotFoundError, match="is a folder"):
        check_gguf_path(tmp_path)
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        check_gguf_path(bad)


def test_missing_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    monkeypatch.setattr(llama_engine, "llama_cpp_importable", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LlamaCppUnavailableError, match=r"trl-reasonmaxxer\[cpu\]"):
        llama_engine.import_llama_cpp()
    with pytest.raises(LlamaCppUnavailableError):
        resolve_llama_cpp(True, model=None)
    # auto: transformers, with one info line however many times it is asked
    assert resolve_llama_cpp(None, model=None) == (None, "llama-cpp-python is not installed")
    resolve_llama_cpp(None, model=None)
    err = capsys.readouterr().err
    assert err.count("trl-reasonmaxxer[cpu]") == 1


def test_auto_is_off_on_gpu_and_without_gguf(monkeypatch):
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_llama_cpp(None, model)[0] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(llama_engine, "llama_cpp_importable", lambda: True)
    path, why = resolve_llama_cpp(None, model)
    assert path is None and "no GGUF" in why
    assert resolve_llama_cpp(None, model, unsupported=["repetition_penalty"])[0] is None
    assert resolve_llama_cpp(False, model)[0] is None


def test_unsupported_settings_and_resolved_sampling(tmp_path):
    """Only a real repetition penalty or a generation_kwargs key that is not a sampling field keeps HF generate; keys
    that override temperature/top_p/top_k/min_p/max_new_tokens are sampled with, as generate applies them."""
    from .helpers import tiny_config

    unsupported = llama_engine.unsupported_settings
    assert unsupported() == [] and unsupported(None, {"do_sample": True}) == []
    assert unsupported(1.2, {"typical_p": 0.9}) == ["repetition_penalty", "generation_kwargs['typical_p']"]
    assert unsupported(1.0, {"repetition_penalty": 1.05}) == ["repetition_penalty"]
    assert unsupported(1.2, {"repetition_penalty": 1.0, "temperature": 0.3, "max_new_tokens": 4}) == []
    args = tiny_config(tmp_path, generation_kwargs={"temperature": 0.3, "top_k": 5, "max_new_tokens": 4})
    assert args.generation_kwargs is None  # the config moved them into its fields
    settings = {"temperature": 0.3, "top_p": args.top_p, "top_k": 5, "min_p": None, "max_new_tokens": 4}
    assert llama_engine.sampling_settings(args) == settings
    args.generation_kwargs = {"top_p": 0.5, "max_tokens": 2, "min_p": 0.1}  # changed after validation: still wins
    assert llama_engine.sampling_settings(args) == settings | {"top_p": 0.5, "max_new_tokens": 2, "min_p": 0.1}


# ---------------------------------------------------------------------------------------------------------
# The engine on a tiny GGUF


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with sharpened weights (clear argmaxes), its folder, and its float32 GGUF."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=32, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(25.0)
    model.eval()
    folder = str(root / "model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    gguf = save_tiny_gguf(model, tokenizer, str(root / "tiny-f32.gguf"))
    prompts = [tokenize_prompt(tokenizer, [{"role": "user", "content": w}]) for w in WORDS]
    return types.SimpleNamespace(model=model, tokenizer=tokenizer, folder=folder, gguf=gguf, prompts=prompts)


def engine_for(tiny, eos_ids=None, **kwargs):
    from trl_reasonmaxxer.llama_engine import LlamaEngine

    eos = eos_ids or {tiny.tokenizer.eos_token_id}
    return LlamaEngine(tiny.gguf, eos, n_threads=1, **kwargs)


def hf_rows(tiny, eos_ids, prompts, max_new_tokens, **kwargs):
    tiny.model.generation_config.eos_token_id = sorted(eos_ids)
    try:
        return generate_completions(
            tiny.model, tiny.tokenizer, prompts, max_new_tokens=max_new_tokens, disable_progress=True, **kwargs
        )
    finally:
        tiny.model.generation_config.eos_token_id = tiny.tokenizer.eos_token_id


@needs_llama
def test_greedy_rows_equal_hf(tiny):
    """Greedy completions are token for token those of the float32 model, in HF's row format: EOS kept and
    ``truncated`` False where a completion stops, ``truncated`` True at the budget."""
    plain = hf_rows(tiny, {tiny.tokenizer.eos_token_id}, tiny.prompts, 6, do_sample=False, seed=None)
    # make the 3rd greedy token of prompt 0 a stop token, so that some rows end early and some do not
    stop = plain[0][0]["completion_ids"][2]
    eos = {tiny.tokenizer.eos_token_id, stop}
    expected = hf_rows(tiny, eos, tiny.prompts, 6, do_sample=False, seed=None)
    engine = engine_for(tiny, eos)
    try:
        got = engine.generate_completions(tiny.prompts, max_new_tokens=6, do_sample=False, batch_size=4)
    finally:
        engine.close()
    assert got == expected
    assert got[0][0]["completion_ids"][-1] == stop and got[0][0]["truncated"] is False
    assert any(g[0]["truncated"] and len(g[0]["completion_ids"]) == 6 for g in got)


def assert_logits_close(ours: dict, theirs: torch.Tensor) -> None:
    """llama.cpp's logits (``{kv_type: logits}``) against transformers' float32 ones. ``"f32"`` (float32 KV cache,
    no flash attention): float32 rounding, measured ~3e-6 of the logits' scale. ``"f16"`` (llama.cpp's defaults,
    what sampling uses): its f16 attention moves them by up to ~3e-3 of their scale on these sharpened weights; the
    distributions and their argmax stay the same."""
    scale = theirs.abs().max()
    assert ours["f32"].shape == theirs.shape
    assert (ours["f32"] - theirs).abs().max() < 2e-5 * scale
    assert (ours["f16"] - theirs).abs().max() < 1e-2 * scale
    kl = torch.nn.functional.kl_div(
        ours["f16"].log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="none"
    )
    assert kl.sum(-1).max() < 1e-3
    assert torch.equal(ours["f16"].argmax(-1), theirs.argmax(-1))


@needs_llama
def test_logits_match_hf(tiny):
    """Teacher-forced next-token distributions: float32 GGUF vs the float32 model (see ``assert_logits_close``)."""
    ids = tiny.prompts[1]
    completion = [5, 6, 7, 8]
    ours = {}
    for kv_type in ("f16", "f32"):
        engine = engine_for(tiny, kv_type=kv_type)
        try:
            ours[kv_type] = torch.from_numpy(engine.next_token_logits(ids, completion))
        finally:
            engine.close()
    with torch.no_grad():
        theirs = tiny.model(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1]
    assert_logits_close(ours, theirs)
    with pytest.raises(ValueError, match="kv_type"):
        engine_for(tiny, kv_type="q8_0")


@needs_llama
def test_prompt_sharing_draws_the_same_samples(tiny):
    """A prompt prefilled once and copied to its samples gives the samples of per-sample prefills, seed for seed;
    greedy too."""
    engine = engine_for(tiny)
    try:
        kwargs = dict(num_generations=4, max_new_tokens=8, temperature=1.0, top_p=0.9, batch_size=8, seed=3)
        shared = engine.generate_completions(tiny.prompts, share_prompts=True, **kwargs)
        single = engine.generate_completions(tiny.prompts, share_prompts=False, **kwargs)
        greedy = dict(num_generations=3, max_new_tokens=8, do_sample=False, batch_size=8)
        assert engine.generate_completions(tiny.prompts, **greedy) == engine.generate_completions(
            tiny.prompts, share_prompts=False, **greedy
        )
    finally:
        engine.close()
    assert shared == single
    # the seeds matter: samples of one prompt differ from each other
    assert len({tuple(r["completion_ids"]) for g in shared for r in g}) > len(tiny.prompts)


@needs_llama
def test_continuous_batching_returns_every_request_once_in_order(tiny):
    """With fewer slots than sequences, finished sequences hand their slots over (and the live ones are
    compacted): every request comes back once, in prompt order, and, seeded per request, independent of the
    batch size, also when a prompt's samples outnumber the slots."""
    eos = {tiny.tokenizer.eos_token_id, 4, 5, 6}  # frequent stops: sequences of many lengths
    engine = engine_for(tiny, eos)
    try:
        kwargs = dict(num_generations=3, max_new_tokens=10, temperature=1.0, top_p=1.0, seed=0)
        wide = engine.generate_completions(tiny.prompts, batch_size=64, **kwargs)
        for batch_size in (1, 2, 5):
            assert engine.generate_completions(tiny.prompts, batch_size=batch_size, **kwargs) == wide
        indices = [4, 9, 2, 0, 7]
        by_index = engine.generate_completions(tiny.prompts, batch_size=4, prompt_indices=indices, **kwargs)
        alone = engine.generate_completions([tiny.prompts[1]], batch_size=4, prompt_indices=[9], **kwargs)
    finally:
        engine.close()
    assert len(wide) == len(tiny.prompts) and all(len(g) == 3 for g in wide)
    lengths = {len(r["completion_ids"]) for g in wide for r in g}
    assert len(lengths) > 2
    for group in wide:
        for row in group:
            ids = row["completion_ids"]
            assert row["truncated"] == (ids[-1] not in eos)
            assert not any(t in eos for t in ids[:-1])
    assert by_index[1] == alone[0]  # a prompt's samples do not depend on the other prompts of the call


@needs_llama
def test_check_tokenizer_rejects_another_vocabulary(tiny):
    engine = engine_for(tiny)
    try:
        engine.check_tokenizer(tiny.tokenizer)
        other = make_tiny_tokenizer()
        other.add_tokens(["extra"] * 1 + [f"x{i}" for i in range(3)])
        with pytest.raises(ValueError, match="not this model's GGUF"):
            engine.check_tokenizer(other)
        with pytest.raises(ValueError, match="outside the GGUF's vocabulary"):
            engine.generate_completions([[1, 2, 10_000]], max_new_tokens=2)
    finally:
        engine.close()


@needs_llama
def test_bad_file_is_a_clear_error(tmp_path, tiny):
    from trl_reasonmaxxer.llama_engine import LlamaEngine

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match="could not load"):
        LlamaEngine(str(broken), {2}, n_threads=1)
    with pytest.raises(GGUFNotFoundError):
        LlamaEngine(str(tmp_path / "nothing.gguf"), {2}, n_threads=1)


@needs_llama
def test_explicit_engine_needs_a_gguf(tiny):
    with pytest.raises(GGUFNotFoundError, match="llama_cpp_model_path"):
        resolve_llama_cpp(True, tiny.model)
    assert resolve_llama_cpp(True, tiny.model, tiny.gguf)[0] == tiny.gguf


def test_weights_match_folder(tiny):
    from trl_reasonmaxxer.llama_engine import weights_match_folder

    assert weights_match_folder(tiny.model, tiny.folder)
    changed = make_tiny_model(tiny.tokenizer, hidden_size=32, seed=1)
    assert not weights_match_folder(changed, tiny.folder)


# ---------------------------------------------------------------------------------------------------------
# Wiring: trainer rollouts, evaluation, adapters


@needs_llama
def test_trainer_rollouts_with_llama_cpp(tiny, tmp_path, capsys):
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.rewards import math_accuracy_reward

    from .helpers import tiny_config

    data = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": w}] for w in WORDS[:3]],
            "solution": ["2", "7", "4"],
        }
    )
    args = tiny_config(
        tmp_path, use_llama_cpp=True, llama_cpp_model_path=tiny.gguf, max_completion_length=5, rollout_batch_size=4
    )
    trainer = ReasonMaxxerTrainer(model=tiny.folder, reward_funcs=math_accuracy_reward, args=args, train_dataset=data)
    assert "rollouts: llama.cpp engine on tiny-f32.gguf" in capsys.readouterr().err
    assert trainer.rollout_engine_name == "llama.cpp"
    pool = trainer.build_rollout_dataset()
    assert len(pool) == 3 * args.num_generations
    assert sorted(set(pool["prompt_index"])) == [0, 1, 2]
    for row in pool:
        assert 1 <= len(row["completion_ids"]) <= 5
        assert row["truncated"] == (row["completion_ids"][-1] != tiny.tokenizer.eos_token_id)
    assert trainer.offline.llama_rollouts.engine is None  # freed after the offline phase
    # HF keeps its own cache key: the two engines draw different samples
    hf = ReasonMaxxerTrainer(
        model=tiny.folder,
        reward_funcs=math_accuracy_reward,
        args=tiny_config(tmp_path, use_llama_cpp=False, max_completion_length=5, rollout_batch_size=4),
        train_dataset=data,
    )
    assert hf.rollout_cache_dir != trainer.rollout_cache_dir


@needs_llama
def test_trainer_engine_honours_generation_kwargs_and_refuses_a_penalty(tiny, tmp_path, capsys):
    """generation_kwargs naming sampling fields keep the llama.cpp engine (and set its budget); a repetition penalty
    keeps generate, said in one line (and is an error with use_llama_cpp=True)."""
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.rewards import math_accuracy_reward

    from .helpers import tiny_config

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": w}] for w in WORDS[:2]], "solution": ["2", "7"]})
    kwargs = dict(llama_cpp_model_path=tiny.gguf, max_completion_length=8, rollout_batch_size=4)
    args = tiny_config(tmp_path, generation_kwargs={"max_new_tokens": 2, "top_k": 3, "temperature": 0.7}, **kwargs)
    trainer = ReasonMaxxerTrainer(model=tiny.folder, reward_funcs=math_accuracy_reward, args=args, train_dataset=data)
    assert trainer.rollout_engine_name == "llama.cpp"
    assert all(len(row["completion_ids"]) <= 2 for row in trainer.build_rollout_dataset())
    capsys.readouterr()
    args = tiny_config(tmp_path, repetition_penalty=1.1, **kwargs)
    trainer = ReasonMaxxerTrainer(model=tiny.folder, reward_funcs=math_accuracy_reward, args=args, train_dataset=data)
    assert trainer.rollout_engine_name == "transformers"
    lines = [line for line in capsys.readouterr().err.splitlines() if "rollouts:" in line]
    assert lines == [
        "[trl_reasonmaxxer] rollouts: transformers generate (the llama.cpp engine does not reproduce "
        "repetition_penalty)"
    ]
    with pytest.raises(ValueError, match="cannot reproduce repetition_penalty"):
        ReasonMaxxerTrainer(
            model=tiny.folder,
            reward_funcs=math_accuracy_reward,
            args=tiny_config(tmp_path, repetition_penalty=1.1, use_llama_cpp=True, **kwargs),
            train_dataset=data,
        )


def test_trainer_auto_uses_generate_without_gguf(tiny_model_dir, tmp_path, capsys):
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.rewards import math_accuracy_reward

    from .helpers import chat_prompts, tiny_config

    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir,
        reward_funcs=math_accuracy_reward,
        args=tiny_config(tmp_path),
        train_dataset=chat_prompts(),
    )
    assert trainer.rollout_engine_name == "transformers"
    assert "rollouts: transformers generate" in capsys.readouterr().err


def test_config_rejects_two_engines(tmp_path):
    from .helpers import tiny_config

    with pytest.raises(ValueError, match="choose one"):
        tiny_config(tmp_path, use_llama_cpp=True, use_vllm=True)
    with pytest.raises(ValueError, match="llama_cpp_n_threads"):
        tiny_config(tmp_path, llama_cpp_n_threads=0)


@needs_llama
def test_evaluate_with_llama_cpp_matches_greedy(tiny):
    from trl_reasonmaxxer.evaluation import evaluate

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": w}] for w in WORDS], "solution": ["2"] * 5})
    kwargs = dict(num_samples=2, max_new_tokens=5, greedy=True, return_completions=True)
    ours = evaluate(tiny.model, tiny.tokenizer, data, use_llama_cpp=True, llama_cpp_model_path=tiny.gguf, **kwargs)
    theirs = evaluate(tiny.model, tiny.tokenizer, data, use_llama_cpp=False, **kwargs)
    assert ours["summary"]["engine"] == "llama.cpp" and theirs["summary"]["engine"] == "transformers"
    assert [r["greedy_completion"] for r in ours["records"]] == [r["greedy_completion"] for r in theirs["records"]]
    assert all(len(r["completions"]) == 2 for r in ours["records"])


@needs_llama
def test_chunked_evaluation_draws_what_one_pass_draws(tiny, tmp_path):
    """A resumable evaluation runs a chunk at a time, and every sample is seeded from its problem's index: the same
    completions as one pass over every problem."""
    from trl_reasonmaxxer.evaluation import evaluate

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": w}] for w in WORDS], "solution": ["2"] * 5})
    kwargs = dict(num_samples=3, max_new_tokens=6, greedy=True, return_completions=True, seed=5)
    kwargs |= dict(use_llama_cpp=True, llama_cpp_model_path=tiny.gguf)
    whole = evaluate(tiny.model, tiny.tokenizer, data, **kwargs)
    chunked = evaluate(tiny.model, tiny.tokenizer, data, resume_dir=str(tmp_path), chunk_problems=2, **kwargs)
    assert chunked["summary"]["chunks"] == {"total": 3, "reused": 0}
    for key in ("completions", "greedy_completion"):
        assert [r[key] for r in chunked["records"]] == [r[key] for r in whole["records"]]
    assert len({c for r in whole["records"] for c in r["completions"]}) > 5  # the samples do differ


def tiny_peft(tiny, targets=("q_proj", "k_proj", "v_proj", "o_proj")):
    """The tiny model under a strong random LoRA (a copy: ``tiny.model`` stays the base)."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(tiny.tokenizer, hidden_size=32, seed=1)
    base.load_state_dict(tiny.model.state_dict())
    torch.manual_seed(0)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(40.0)
    return peft.eval()


@needs_llama
def test_evaluate_peft_adapter_as_gguf_lora(tiny):
    """A PEFT model is evaluated as base GGUF + its adapter converted by ``gguf_export.peft_to_gguf_lora`` (LoRA on
    q/k/v/o: the llama architecture's q/k rows are reordered) and applied by llama.cpp: greedy rows equal HF+PEFT's,
    and the teacher-forced logits match PEFT's within float32 rounding with ``kv_type="f32"``."""
    from trl_reasonmaxxer.evaluation import evaluate

    peft = tiny_peft(tiny)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": w}] for w in WORDS], "solution": ["2"] * 5})
    kwargs = dict(num_samples=0, max_new_tokens=5, greedy=True, return_completions=True)
    ours = evaluate(peft, tiny.tokenizer, data, use_llama_cpp=True, llama_cpp_model_path=tiny.gguf, **kwargs)
    theirs = evaluate(peft, tiny.tokenizer, data, use_llama_cpp=False, **kwargs)
    base_out = evaluate(tiny.model, tiny.tokenizer, data, use_llama_cpp=False, **kwargs)
    greedy = lambda r: [x["greedy_completion"] for x in r["records"]]
    assert ours["summary"]["engine"] == "llama.cpp"
    assert greedy(ours) == greedy(theirs)
    assert greedy(theirs) != greedy(base_out)  # the adapter changes the outputs, and llama.cpp applied it

    ids, completion = tiny.prompts[1], [5, 6, 7, 8, 9, 10]
    engine = llama_engine.evaluation_engine(peft, tiny.tokenizer, True, tiny.gguf, n_threads=1)
    try:
        assert engine.adapter is not None
        logits = {}
        for kv_type in ("f16", "f32"):
            engine.kv_type = kv_type  # read when each call makes its context
            logits[kv_type] = torch.from_numpy(engine.next_token_logits(ids, completion))
    finally:
        engine.close()
    with torch.no_grad():
        lora = peft(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1]
        base = tiny.model(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1]
    assert (lora - base).abs().max() > 1.0  # the adapter moves the logits by more than any tolerance below
    assert_logits_close(logits, lora)


def test_announce_goes_through_logging_when_configured(caplog):
    caplog.set_level(logging.INFO, logger="trl_reasonmaxxer.llama_engine")
    llama_engine.announce("hello", key="greeting")
    llama_engine.announce("hello again", key="greeting")  # once per key
    assert "hello" in caplog.text and "hello again" not in caplog.text


@needs_llama
def test_rollout_speed_benchmark_quick(tmp_path, capsys):
    """``benchmarks/rollout_speed.py --quick`` runs both engines on the tiny model and writes the report's keys."""
    import json

    from .helpers import load_benchmark

    bench = load_benchmark("rollout_speed")
    out = tmp_path / "speed.json"
    bench.main(["--quick", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    for key in ("engines", "speedup", "speedup_eval", "kl_per_token", "ceiling_tokens_per_s", "fraction_of_ceiling"):
        assert report[key] is not None, key
    assert set(report["engines"]) == {"hf-fp32", "llama.cpp"}
    assert report["kl_per_token"]["mean"] < 1e-3  # float32 GGUF: llama.cpp and transformers agree
    assert "start" in report["load_average"] and "commit" in report
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("speedup vs hf-fp32 at batch 32: ")


@needs_llama
def test_grpo_samples_through_the_engine_with_the_current_lora(tiny, tmp_path, monkeypatch):
    """TRL's GRPOTrainer with ``rollout_func=GRPORollouts``: each step's completions come from llama.cpp, with the
    policy's LoRA exported at every step; afterwards the engine's adapter is the trained one (logits of PEFT)."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from .helpers import FAST, alternating_reward

    rollouts = llama_engine.grpo_rollout_func(tiny.model, True, tiny.gguf, n_threads=1)
    calls = []
    sample = llama_engine.LlamaEngine.generate_completions
    monkeypatch.setattr(
        llama_engine.LlamaEngine,
        "generate_completions",
        lambda self, *a, **k: (
            calls.append((self.lora_path, k["num_generations"], list(k["prompt_indices"]))) or sample(self, *a, **k)
        ),
    )
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": w}] for w in WORDS[:2]]})
    args = GRPOConfig(
        **FAST,
        bf16=False,  # float32, as the comparison runs GRPO on a CPU
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=4,
        learning_rate=0.05,
        temperature=1.0,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = GRPOTrainer(
        model=tiny.folder,
        reward_funcs=alternating_reward,
        args=args,
        train_dataset=data,
        processing_class=tiny.tokenizer,
        peft_config=lora,
        rollout_func=rollouts,
    )
    try:
        trainer.train()
        assert trainer.state.global_step == 2
        assert len(calls) == 2 and all(n == 4 for _, n, _ in calls)  # one prompt x 4 generations per step
        assert rollouts.step == 1 and rollouts.engine.adapter is not None
        assert rollouts(data["prompt"][:1] * 4, trainer)["completion_ids"]  # step 2: the trained adapter
        # new seeds at every step; a run resumed at step 2 (a new rollout_func) draws step 2's, not step 0's
        resumed = llama_engine.grpo_rollout_func(tiny.model, True, tiny.gguf, n_threads=1)
        try:
            resumed(data["prompt"][:1] * 4, trainer)
        finally:
            resumed.close()
        assert [indices for _, _, indices in calls] == [[0], [1], [2], [2]]
        ids, completion = tiny.prompts[0], [5, 6, 7]
        rollouts.engine.kv_type = "f32"
        ours = torch.from_numpy(rollouts.engine.next_token_logits(ids, completion))
        policy = trainer.model.eval()
        assert policy.dtype == torch.float32
        with torch.no_grad():
            theirs = policy(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1]
            with policy.disable_adapter():
                base = policy(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1]
        assert (theirs - base).abs().max() > 1e-2  # training moved the policy
        assert (ours - theirs).abs().max() < 2e-5 * theirs.abs().max()
    finally:
        rollouts.close()
