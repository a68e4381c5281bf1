"""HF-generate rollouts: row format, seeding, explicit sampling settings, stopping, empty prompts, and a progress
bar that moves within a batch."""

import logging

import pytest
import torch
from transformers import StoppingCriteria

from trl_reasonmaxxer import rollouts
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tiny_tokenizer()
    return make_tiny_model(tokenizer), tokenizer


class RecordingBar:
    """Stands in for tqdm: records every update so the test can see steps inside a batch."""

    def __init__(self, total, **kwargs):
        self.total, self.n, self.updates = total, 0, []

    def update(self, k):
        self.n += k
        self.updates.append(k)

    def set_postfix(self, **kwargs):
        self.postfix = kwargs

    def close(self):
        pass


def test_progress_counts_decoding_steps_and_ends_at_its_total(tiny, monkeypatch):
    model, tokenizer = tiny
    bars = []
    monkeypatch.setattr(rollouts, "tqdm", lambda **kw: bars.append(RecordingBar(**kw)) or bars[-1])
    prompts = [tokenizer("the cat")["input_ids"]] * 3
    groups = rollouts.generate_completions(
        model, tokenizer, prompts, num_generations=2, max_new_tokens=5, batch_size=4, temperature=1.0
    )
    (bar,) = bars
    assert bar.total == 2 * 5  # 3 prompts × 2 samples in batches of 2 prompts: 2 batches of up to 5 steps
    assert bar.n == bar.total
    assert bar.updates.count(1) >= 2  # per-step updates happened inside the batches, not only at their ends
    assert bar.postfix == {"seqs": "6/6"}
    assert [len(g) for g in groups] == [2, 2, 2]


def test_progress_does_not_change_the_samples(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("the cat")["input_ids"], tokenizer("a dog")["input_ids"]]
    kwargs = dict(num_generations=3, max_new_tokens=6, temperature=1.0, seed=5)
    shown = rollouts.generate_completions(model, tokenizer, prompts, disable_progress=False, **kwargs)
    hidden = rollouts.generate_completions(model, tokenizer, prompts, disable_progress=True, **kwargs)
    assert shown == hidden
    for group in shown:
        for row in group:
            assert row["truncated"] == (
                len(row["completion_ids"]) == 6 and row["completion_ids"][-1] != tokenizer.eos_token_id
            )


# ------------------------------------------------------------------ sampling settings are explicit (audit F3)

QWEN_INSTRUCT_SAMPLING = dict(  # Qwen2.5-*-Instruct's generation_config, plus fields that would bend the samples more
    top_k=20,
    top_p=0.8,
    temperature=0.7,
    repetition_penalty=1.05,
    do_sample=True,
    no_repeat_ngram_size=2,
    min_new_tokens=4,
    typical_p=0.9,
)


def test_the_models_generation_config_does_not_leak_into_rollouts(monkeypatch):
    """A checkpoint whose generation_config sets sampling fields samples exactly like one that sets none."""
    from transformers import GenerationConfig

    tokenizer = make_tiny_tokenizer()
    plain, instruct = make_tiny_model(tokenizer), make_tiny_model(tokenizer)
    instruct.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **QWEN_INSTRUCT_SAMPLING
    )
    prompts = [tokenizer("what is 1 plus 1 ?")["input_ids"], tokenizer("the answer is")["input_ids"]]
    kwargs = dict(num_generations=4, max_new_tokens=10, temperature=0.6, top_p=0.95, seed=3, disable_progress=True)
    assert rollouts.generate_completions(instruct, tokenizer, prompts, **kwargs) == rollouts.generate_completions(
        plain, tokenizer, prompts, **kwargs
    )
    # the effective settings generate used, and its logits processors: only the configured ones
    seen = []
    real = instruct.generate
    monkeypatch.setattr(instruct, "generate", lambda **kw: seen.append(kw) or real(**kw))
    rollouts.generate_completions(instruct, tokenizer, prompts[:1], min_p=0.05, repetition_penalty=1.2, **kwargs)
    kw = {k: v for k, v in seen[0].items() if k not in ("input_ids", "attention_mask", "stopping_criteria")}
    config, _ = instruct._prepare_generation_config(None, **kw)
    assert (config.temperature, config.top_p, config.top_k, config.min_p) == (0.6, 0.95, None, 0.05)
    assert (config.repetition_penalty, config.no_repeat_ngram_size, config.typical_p) == (1.2, 0, 1.0)
    assert config.min_new_tokens is None and config.num_return_sequences == 1
    # generation_kwargs still win, as documented (and as in GRPO)
    seen.clear()
    rollouts.generate_completions(instruct, tokenizer, prompts[:1], generation_kwargs={"top_k": 5}, **kwargs)
    assert seen[0]["top_k"] == 5


# -------------------------------------------------------------- rows end where sampling ended (audit F4)


class StopRowAfter(StoppingCriteria):
    """Stops row ``row`` once it has ``n`` new tokens (stands in for stop strings or a user criterion)."""

    def __init__(self, start, row=0, n=3):
        self.start, self.row, self.n = start, row, n

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] - self.start >= self.n
        return done


@pytest.mark.parametrize("pad_is_eos", [True, False])
def test_a_row_stopped_early_gets_no_made_up_eos(pad_is_eos):
    model, tokenizer = make_tiny_model(make_tiny_tokenizer()), make_tiny_tokenizer()
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token  # as the trainer does without a pad token; Qwen2.5's setup
    prompt = tokenizer("what is 1 plus 1 ?")["input_ids"]
    kwargs = dict(num_generations=2, max_new_tokens=8, temperature=1.0, seed=0, disable_progress=True)
    free = rollouts.generate_completions(model, tokenizer, [prompt], **kwargs)[0]
    stop = {"stopping_criteria": [StopRowAfter(len(prompt))]}
    stopped = rollouts.generate_completions(model, tokenizer, [prompt], generation_kwargs=stop, **kwargs)[0]
    assert len(free[0]["completion_ids"]) > 3 and tokenizer.eos_token_id not in free[0]["completion_ids"][:3]
    # row 0: its 3 sampled tokens, no EOS after them (the old rows got the pad = EOS appended as if sampled)
    assert stopped[0] == {"completion_ids": free[0]["completion_ids"][:3], "truncated": True}
    assert stopped[1] == free[1]  # the other row is untouched


def test_stop_strings_go_through_the_recorder_and_end_rows_without_an_eos(monkeypatch):
    """``stop_strings`` become a ``StopStringCriteria`` built with the tokenizer (which ``generate`` would otherwise
    demand) and end rows like any stopping criterion. HF's criterion cannot read the tiny word-level vocabulary, so
    a stand-in stops row 1 after 2 tokens."""
    model, tokenizer = make_tiny_model(make_tiny_tokenizer()), make_tiny_tokenizer()
    prompt = tokenizer("what is 1 plus 1 ?")["input_ids"]
    built = []

    def fake_stop_strings(tok, stop_strings):
        built.append((tok, stop_strings))
        return StopRowAfter(len(prompt), row=1, n=2)

    monkeypatch.setattr(rollouts, "StopStringCriteria", fake_stop_strings)
    kwargs = dict(num_generations=2, max_new_tokens=8, temperature=1.0, seed=0, disable_progress=True)
    free = rollouts.generate_completions(model, tokenizer, [prompt], **kwargs)[0]
    stop = {"stop_strings": ["Human:"]}
    stopped = rollouts.generate_completions(model, tokenizer, [prompt], generation_kwargs=stop, **kwargs)[0]
    assert built == [(tokenizer, ["Human:"])]
    assert stopped == [free[0], {"completion_ids": free[1]["completion_ids"][:2], "truncated": True}]


def test_completion_row_cuts_at_the_sampled_length_and_keeps_sampled_pads():
    tokenizer = make_tiny_tokenizer()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert rollouts.completion_row([7, 8, eos, pad], {eos}) == {"completion_ids": [7, 8, eos], "truncated": False}
    # an unfinished row was sampled in full, pads included (they used to be stripped)
    assert rollouts.completion_row([7, 8, pad, pad], {eos}) == {"completion_ids": [7, 8, pad, pad], "truncated": True}
    # a row stopped after 2 tokens, then padded with pad = EOS: the padding is not a sampled EOS
    assert rollouts.completion_row([7, 8, eos, eos], {eos}, sampled=2) == {"completion_ids": [7, 8], "truncated": True}
    assert rollouts.completion_row([7, eos, eos, eos], {eos}, sampled=3) == {
        "completion_ids": [7, eos],
        "truncated": False,
    }


# ----------------------------------------------------------------------------- empty prompts (audit F5)


def test_empty_prompts_are_refused_with_the_fix():
    model, tokenizer = make_tiny_model(make_tiny_tokenizer()), make_tiny_tokenizer()
    with pytest.raises(ValueError, match="no token at all.*empty prompts"):
        rollouts.tokenize_prompt(tokenizer, "")
    ok = tokenizer("the cat")["input_ids"]
    with pytest.raises(ValueError, match="Prompt 1 has no token"):
        rollouts.generate_completions(model, tokenizer, [ok, []], max_new_tokens=2, disable_progress=True)


# ------------------------------------------------------------------------------- truncation rate (audit F2)


def test_a_truncation_rate_above_20_percent_warns_naming_max_completion_length(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.rollouts"):
        assert rollouts.warn_if_truncated([True] * 2 + [False] * 8, 512) == 0.2
        assert not caplog.records
        assert rollouts.warn_if_truncated([True] * 3 + [False] * 7, 512) == pytest.approx(0.3)
    (record,) = caplog.records
    assert "30% of the pool's 10 rollouts" in record.message and "max_completion_length=512" in record.message


def test_the_trainer_warns_about_a_truncated_pool(tmp_path, caplog):
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import save_tiny_model

    from .helpers import make_pool, tiny_config

    rows = [(1.0, [0.5, 2.0], True), (0.0, [2.0, 0.5], True), (1.0, [0.5, 2.0]), (0.0, [2.0, 0.5])]
    pool = make_pool({0: rows}, prompt_len=2, vocab=39)
    model = save_tiny_model(str(tmp_path / "model"))
    trainer = ReasonMaxxerTrainer(model, args=tiny_config(tmp_path / "run", fork_threshold=1.0), rollout_dataset=pool)
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.rollouts"):
        trainer.prepare_training_data()
    assert any("50% of the pool's 4 rollouts" in r.message for r in caplog.records)
