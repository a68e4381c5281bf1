"""Bad input and faults (the reliability audit's cases): each one is refused early with one message that names the
problem and the fix, or does what a GRPO user expects. Case ids (C12, D-5, ...) refer to the audit."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, IterableDataset
from transformers import AutoConfig, AutoModelForCausalLM

import trl_reasonmaxxer.trainer as trainer_module
from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer, offline
from trl_reasonmaxxer.inputs import (
    LOCK_FILE,
    acquire_output_dir_lock,
    check_prompt_lengths,
    invalid_prompts,
    learned_position_limit,
    release_output_dir_lock,
    resolve_resume_checkpoint,
)
from trl_reasonmaxxer.testing import make_tiny_tokenizer

from .helpers import CallCounter, alternating_reward, chat_prompts, make_pool, make_trainer, tiny_config


def config(tmp_path, **overrides) -> ReasonMaxxerConfig:
    return ReasonMaxxerConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


@pytest.fixture
def counted_generate(monkeypatch):
    counter = CallCounter(offline.generate_completions)
    monkeypatch.setattr(offline, "generate_completions", counter)
    return counter


# ------------------------------------------------------------------------------------------------ configuration


def test_config_docstring_documents_each_own_or_changed_parameter_in_trl_format():
    """TRL's docstring format (one ``name (`type`, ...):`` entry per parameter under ``Parameters:``) for every field
    ReasonMaxxerConfig adds or whose default differs from GRPOConfig's, and argparse choices where values are fixed."""
    import dataclasses

    from trl import GRPOConfig

    grpo = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    ours = {f.name: f for f in dataclasses.fields(ReasonMaxxerConfig)}
    changed = {n for n, f in ours.items() if n not in grpo or f.default != grpo[n].default}
    doc = ReasonMaxxerConfig.__doc__
    assert "\n    Parameters:\n        > Parameters that control" in doc and "> [!NOTE]" in doc
    assert {n for n in changed if not re.search(rf"^        {n} \(`", doc, re.MULTILINE)} == set()
    assert {
        n
        for n in ("loss_type", "fork_gate", "fork_scope", "vllm_mode", "hub_strategy")
        if "choices" not in ours[n].metadata
    } == set()


@pytest.mark.parametrize("num_generations", [1, 0, None])
def test_error_num_generations_below_two(tmp_path, num_generations):
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        ReasonMaxxerConfig(output_dir=str(tmp_path), num_generations=num_generations, use_cpu=True, report_to="none")


def test_loss_type_typo_is_refused_and_grpo_names_fall_back(tmp_path, caplog):  # C12
    for typo in ("adv-ratio", "fork-dpo", "foo"):
        with pytest.raises(ValueError, match=rf"loss_type must be one of adv_ce, adv_ratio, fork_dpo.*got '{typo}'"):
            config(tmp_path, loss_type=typo)
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.config"):
        assert config(tmp_path, loss_type="dapo").loss_type == "adv_ce"
    assert "'dapo' is a GRPO loss" in caplog.text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(beta=-0.5), r"beta must be in \[0.0, inf\), got -0.5.*KL anchor"),  # C8
        (
            dict(loss_type="fork_dpo", dpo_beta=-1.0),
            r"dpo_beta must be in \(0.0, inf\).*reverse the preference",
        ),  # C27
        (dict(loss_type="adv_ratio", epsilon=-0.5), r"epsilon must be in \(0.0, inf\).*clip range"),  # C26
        (dict(epsilon=-0.5), r"epsilon must be in \[0.0, inf\)"),
        (dict(neg_prob_floor=2.0), r"neg_prob_floor must be in \(0.0, 1.0\), got 2.0.*probability"),  # C25
        (dict(neg_prob_floor=-0.1), r"neg_prob_floor must be in \(0.0, 1.0\), got -0.1"),  # C24
        (dict(advantage_clip=0.0), r"advantage_clip must be in \(0.0, inf\).*no pair to train on"),  # C17
        (dict(rollout_chunk_size=0), r"rollout_chunk_size must be >= 1, got 0"),  # C18
        (dict(rollout_chunk_size=-1), r"rollout_chunk_size must be >= 1, got -1"),  # C19
        (dict(scoring_batch_size=0), r"scoring_batch_size must be >= 1, got 0"),  # C21
        (dict(rollout_batch_size=-4), r"rollout_batch_size must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0.0, 1.0\], got 0.0"),  # C4
        (dict(top_p=2.0), r"top_p must be in \(0.0, 1.0\], got 2.0"),  # C4
        (dict(fork_scope="rollout", fork_topk=0), r"fork_topk must be >= 1, got 0.*fork_scope='rollout'"),  # C14
        (dict(fork_scope="rollout", fork_topk=-2), r"fork_topk must be >= 1, got -2"),  # C15
        (dict(temperature=0.0), r"temperature must be in \(0.0, inf\).*small positive temperature"),  # C2
        (dict(per_device_train_batch_size=0), r"per_device_train_batch_size must be >= 1"),
        (dict(gradient_accumulation_steps=0), r"gradient_accumulation_steps must be >= 1"),
        (dict(max_problems=0), r"max_problems must be >= 1"),
        (dict(fork_fraction=0.0), r"fork_fraction must be in \(0.0, 1.0\]"),
        (dict(max_completion_length=0), r"max_completion_length must be >= 1"),
    ],
)
def test_out_of_range_settings_are_refused_at_config_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_generations="4"), r"num_generations must be an integer, got '4'"),  # C29
        (dict(max_problems=2.5), r"max_problems must be an integer, got 2.5"),
        (dict(beta="0.1"), r"beta must be a number, got '0.1'"),
    ],
)
def test_wrong_types_are_refused_at_config_time(tmp_path, overrides, message):
    with pytest.raises(TypeError, match=message):
        config(tmp_path, **overrides)


def test_pad_to_multiple_of_strings(tmp_path):  # C30
    with pytest.raises(
        ValueError, match=r"pad_to_multiple_of must be a positive integer, None or 'auto'; got 'eight'"
    ):
        config(tmp_path, pad_to_multiple_of="eight")
    assert config(tmp_path, pad_to_multiple_of="8").pad_to_multiple_of == 8
    assert config(tmp_path, pad_to_multiple_of="auto").pad_to_multiple_of is None


def test_generation_kwargs_override_the_sampling_fields_as_in_grpo(tmp_path):  # C22
    c = config(tmp_path, generation_kwargs={"max_new_tokens": 5, "temperature": 0.9, "top_k": 7, "do_sample": True})
    assert (c.max_completion_length, c.temperature, c.top_k, c.generation_kwargs) == (5, 0.9, 7, None)
    c = config(tmp_path, generation_kwargs='{"top_p": 0.5, "typical_p": 0.9}')  # a JSON string from the CLI
    assert (c.top_p, c.generation_kwargs) == (0.5, {"typical_p": 0.9})
    with pytest.raises(ValueError, match=r"greedy rollouts.*small temperature"):
        config(tmp_path, generation_kwargs={"do_sample": False})
    with pytest.raises(ValueError, match=r"'num_return_sequences' \(use num_generations\)"):
        config(tmp_path, generation_kwargs={"num_return_sequences": 2})
    with pytest.raises(ValueError, match=r"temperature must be in \(0.0, inf\)"):
        config(tmp_path, generation_kwargs={"temperature": 0.0})


def test_generation_kwargs_with_max_new_tokens_train(tiny_model_dir, tmp_path, counted_generate):  # C22
    trainer = make_trainer(tiny_model_dir, tmp_path, generation_kwargs={"max_new_tokens": 2})
    trainer.train()
    assert counted_generate.calls == 3 and trainer.state.global_step == 2
    assert max(len(r["completion_ids"]) for r in trainer.build_rollout_dataset()) == 2


def test_fork_topk_without_rollout_scope_warns(tmp_path, caplog):  # C16
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.config"):
        config(tmp_path, fork_topk=1)
    assert "fork_topk=1 has no effect with fork_scope='pool'" in caplog.text


def test_a_grpo_config_is_refused_with_the_rename(tiny_model_dir, tmp_path):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match=r"args must be a ReasonMaxxerConfig, got GRPOConfig.*rename GRPOConfig"):
        ReasonMaxxerTrainer(
            tiny_model_dir,
            alternating_reward,
            args=GRPOConfig(str(tmp_path), use_cpu=True),
            train_dataset=chat_prompts(1),
        )


def test_eval_strategy_is_reset_to_no_and_training_runs(tiny_model_dir, tmp_path, caplog):  # C32, L15
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.inputs"):
        trainer = make_trainer(tiny_model_dir, tmp_path, eval_strategy="steps", eval_steps=1)
    assert "eval_strategy='steps' has no effect" in caplog.text and "trl-reasonmaxxer eval" in caplog.text
    assert trainer.args.eval_strategy == "no"
    trainer.train()
    assert trainer.state.global_step == 2


# ------------------------------------------------------------------------------------------------ dataset


def test_error_without_prompt_column(tiny_model_dir, tmp_path):
    dataset = Dataset.from_dict({"question": ["what is 1 plus 1 ?"]})
    with pytest.raises(ValueError, match=r"no `prompt` column.*question"):
        make_trainer(tiny_model_dir, tmp_path, dataset=dataset)


def test_error_on_empty_dataset(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        make_trainer(tiny_model_dir, tmp_path, dataset=Dataset.from_dict({"prompt": []}))


@pytest.mark.parametrize(
    "prompts, message",
    [
        (["", "what is 1 plus 1 ?", "what is 2 plus 2 ?"], r"rows \[0\] are empty or whitespace-only"),  # D8
        (["   ", "what is 1 plus 1 ?"], r"rows \[0\] are empty or whitespace-only"),  # D9, D10
        ([[], []], r"rows \[0, 1\] are empty lists of chat messages"),  # D11
        ([[{"role": "user", "text": "what is 1 plus 1"}]], r"rows \[0\] hold chat messages without a 'role' and a "),
        ([[{"role": "user", "content": "  "}]], r"rows \[0\] are chat messages with only empty contents"),
        (["what is 1 plus 1 ?", None], r"rows \[1\] are NoneType, not a string"),  # D2
    ],
)
def test_prompts_nothing_can_be_sampled_from_are_named_at_construction(
    tiny_model_dir, tmp_path, counted_generate, prompts, message
):
    with pytest.raises(ValueError, match=message) as err:
        make_trainer(tiny_model_dir, tmp_path, dataset=Dataset.from_dict({"prompt": prompts}))
    assert "Fix or drop those rows" in str(err.value)
    assert counted_generate.calls == 0


def test_invalid_prompts_lists_every_row():
    prompts = ["ok", "", 3, [{"role": "user", "content": "hi"}], " \n", [{"role": "user", "content": [{"t": 1}]}]]
    assert invalid_prompts(prompts) == {
        "are empty or whitespace-only": [1, 4],
        "are int, not a string or a list of chat messages": [2],
    }


@pytest.mark.parametrize(
    "dataset, message",
    [
        (DatasetDict({"train": chat_prompts(2)}), r"DatasetDict with splits \['train'\].*dataset\['train'\]"),  # D6
        (["what is 1 plus 1 ?"], r"got a list; build one with Dataset.from_dict\(\{'prompt': prompts\}\)"),  # D12
        ([{"prompt": "what is 1 plus 1 ?"}], r"got a list; build one with Dataset.from_list\(rows\)"),  # D7
        (IterableDataset.from_generator(lambda: iter([{"prompt": "a"}])), r"IterableDataset.*streaming"),  # D5
    ],
)
def test_dataset_of_the_wrong_kind_says_how_to_convert_it(tiny_model_dir, tmp_path, dataset, message):
    with pytest.raises(TypeError, match=message):
        make_trainer(tiny_model_dir, tmp_path, dataset=dataset)


def test_prompts_too_long_for_learned_positions_are_named():  # D14, D15
    check_prompt_lengths([[1, 2], [3] * 5], max_completion_length=4, limit=None)  # RoPE: no limit
    with pytest.raises(ValueError, match=r"rows \[1, 2\] are too long.*at most 6 tokens.*16 learned.*longest has 9"):
        check_prompt_lengths([[1] * 6, [1] * 7, [1] * 9], max_completion_length=10, limit=16)
    with pytest.raises(ValueError, match=r"rows \[1\] tokenize to no tokens"):
        check_prompt_lengths([[1], []], max_completion_length=10, limit=None)
    tokenizer = make_tiny_tokenizer()
    gpt2 = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=8, n_layer=1, n_head=2, n_positions=64)
    )
    assert learned_position_limit(gpt2) == 64
    llama = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(
            "llama",
            vocab_size=len(tokenizer),
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    assert learned_position_limit(llama) is None


def test_tokenizer_without_pad_and_eos_is_refused_at_construction(tiny_model_dir, tmp_path):  # C35
    tokenizer = make_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        ReasonMaxxerTrainer(
            tiny_model_dir,
            alternating_reward,
            args=tiny_config(tmp_path),
            train_dataset=chat_prompts(2),
            processing_class=tokenizer,
        )


# ------------------------------------------------------------------------------------------------ reward functions


def test_async_reward_functions_run_as_in_grpo(tiny_model_dir, tmp_path):  # R12
    async def async_alternating(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(i % 2 == 0) for i in range(len(completions))]

    trainer = make_trainer(tiny_model_dir, tmp_path, reward=[async_alternating, alternating_reward])
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.pool_stats["pool/prompts_selected"] == 3


def test_a_reward_function_that_edits_its_inputs_changes_nothing(tiny_model_dir, tmp_path):  # R24
    def clearing(completions, completion_ids, **kwargs):
        for ids in completion_ids:
            ids.clear()
        completions.clear()
        return [float(i % 2 == 0) for i in range(len(completion_ids))]

    trainer = make_trainer(tiny_model_dir, tmp_path, reward=[clearing, alternating_reward], reward_weights=[0.5, 0.5])
    trainer.train()
    assert all(len(r["completion_ids"]) > 0 for r in trainer.build_rollout_dataset())


@pytest.mark.parametrize(
    "reward, message",
    [
        ("Qwen/Qwen2.5-0.5B-Reward", r"looks like a reward model.*wrap the model in a function"),  # R22
        ("nomodule.func", r"cannot import module 'nomodule'"),  # R20
        ("os.path.sep", r"module 'os.path' has a non-callable str 'sep'"),  # R21
        ("os.path.nothing", r"module 'os.path' has no attribute 'nothing'"),
    ],
)
def test_reward_names_that_cannot_work_are_refused_at_construction(tiny_model_dir, tmp_path, reward, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny_model_dir, tmp_path, reward=reward)


def test_reward_weights_length_is_checked_at_construction(tiny_model_dir, tmp_path, counted_generate):  # R18
    with pytest.raises(ValueError, match="reward_weights has 1 entries but there are 2 reward functions"):
        make_trainer(tiny_model_dir, tmp_path, reward=[alternating_reward, alternating_reward], reward_weights=[1.0])
    assert counted_generate.calls == 0


def test_infinite_rewards_are_refused_and_no_pairs_is_explained(tiny_model_dir, tmp_path):  # R13, D-6
    def infinite(completions, **kwargs):
        return [float("inf") if i % 4 == 0 else float(i % 2) for i in range(len(completions))]

    with pytest.raises(ValueError, match=r"'infinite' returned inf for completion 0"):
        make_trainer(tiny_model_dir, tmp_path, reward=infinite).train()
    # fewer items than one batch of 8 with drop_last: no sampler error, a clear message
    trainer = make_trainer(tiny_model_dir, tmp_path, per_device_train_batch_size=8, dataloader_drop_last=True)
    with pytest.raises(ValueError, match=r"left \d+ training items, fewer than one batch \(8\)") as err:
        trainer.train()
    assert "dataloader_drop_last=False" in str(err.value) and "rollouts are kept in" in str(err.value)


# ------------------------------------------------------------------------------------------------ rollout_dataset


def scored_pool(**kwargs):
    return make_pool({0: [(1.0, [0.1, 3.0]), (0.0, [3.0, 0.2])]}, **kwargs)


def short_scores_pool():
    rows = scored_pool().to_list()
    rows[0]["entropy"], rows[0]["logps"] = [3.0], [-1.0]
    return Dataset.from_list(rows)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: scored_pool().remove_columns("prompt_ids"), ValueError, r"no prompt_ids column"),  # P1
        (short_scores_pool, ValueError, r"rows \[0\]: `entropy` and `completion_ids` differ in length"),  # P2
        (lambda: scored_pool(vocab=5000), ValueError, r"token ids outside this model's vocabulary"),  # P3
        (lambda: scored_pool().to_list(), TypeError, r"must be a datasets.Dataset, got list.*Dataset.from_list"),  # P5
    ],
)
def test_rollout_dataset_is_checked_before_use(tiny_model_dir, tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        ReasonMaxxerTrainer(tiny_model_dir, args=tiny_config(tmp_path, fork_threshold=1.0), rollout_dataset=make())


def test_unrewarded_pool_with_prompts_outside_train_dataset(tiny_model_dir, tmp_path):  # P6
    unrewarded = make_pool({5: [(None, 2), (None, 3)]}, scored=False).remove_columns("reward")
    with pytest.raises(ValueError, match=r"rows \[0, 1\] have a prompt_index outside train_dataset \(rows 0 to 1\)"):
        ReasonMaxxerTrainer(
            tiny_model_dir,
            alternating_reward,
            args=tiny_config(tmp_path),
            train_dataset=chat_prompts(2),
            rollout_dataset=unrewarded,
        )


def test_rewarded_pool_with_reward_funcs_warns(tiny_model_dir, tmp_path, caplog):  # R26
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.inputs"):
        ReasonMaxxerTrainer(
            tiny_model_dir,
            alternating_reward,
            args=tiny_config(tmp_path, fork_threshold=1.0),
            train_dataset=chat_prompts(1),
            rollout_dataset=scored_pool(),
        )
    assert "reward_funcs are not called" in caplog.text and "remove_columns('reward')" in caplog.text


# ------------------------------------------------------------------------------------------------ output_dir


def test_output_dir_that_cannot_be_written_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch):  # D-9
    blocker = tmp_path / "file"
    blocker.write_text("x")
    loads = CallCounter(trainer_module.create_model_from_path)
    monkeypatch.setattr(trainer_module, "create_model_from_path", loads)
    with pytest.raises(OSError, match=r"output_dir '.*file/out' is not writable.*Choose a writable output_dir"):
        make_trainer(tiny_model_dir, blocker / "out")
    real_open = os.open

    def read_only(path, flags, *args):  # a read-only mount (chmod does not stop root)
        if str(path).endswith(LOCK_FILE):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OSError, match=r"is not writable \(Read-only file system\)"):
        make_trainer(tiny_model_dir, tmp_path / "ro")
    assert loads.calls == 0


def write_lock(output_dir: Path, pid: int, **extra):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), **extra}))


def test_second_run_on_one_output_dir_is_refused_and_a_stale_lock_taken_over(tiny_model_dir, tmp_path, caplog):  # D-7
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, other.pid, time="2026-01-01 00:00:00")
        with pytest.raises(RuntimeError) as err:
            make_trainer(tiny_model_dir, tmp_path)
        message = str(err.value)
        assert f"in use by another ReasonMaxxer run (pid {other.pid}" in message
        assert f"kill {other.pid}" in message and "another output_dir" in message and LOCK_FILE in message
    finally:
        other.kill()
        other.wait()
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.inputs"):
        trainer = make_trainer(tiny_model_dir, tmp_path)  # the other run died: its lock is stale
    assert "left by a run that is no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    second = make_trainer(tiny_model_dir, tmp_path)  # the same process may hold it twice
    del trainer
    gc.collect()
    assert (tmp_path / LOCK_FILE).exists()
    del second
    gc.collect()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    write_lock(tmp_path, os.getppid(), start="not-its-start-time")  # a live pid, but another process's
    path = acquire_output_dir_lock(str(tmp_path))
    try:
        assert json.loads(Path(path).read_text())["pid"] == os.getpid()
    finally:
        release_output_dir_lock(path)
    assert not Path(path).exists()


# ------------------------------------------------------------------------------------------------ checkpoints


def fake_checkpoints(output_dir: Path, complete: list[int], incomplete: list[int]):
    for step in complete + incomplete:
        (output_dir / f"checkpoint-{step}").mkdir(parents=True)
    for step in complete:
        (output_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    for step in incomplete[:1]:
        (output_dir / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_st')  # cut mid-write


def test_resume_skips_checkpoints_cut_mid_write(tmp_path, caplog):  # D-8
    fake_checkpoints(tmp_path, complete=[2, 10], incomplete=[12, 14])
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.inputs"):
        assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert "Skipping incomplete checkpoints" in caplog.text and "checkpoint-14" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-12 is incomplete.*Resume from .*checkpoint-10"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-12"), str(tmp_path))
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), str(tmp_path)) == str(tmp_path / "checkpoint-2")
    empty = tmp_path / "empty"
    fake_checkpoints(empty, complete=[], incomplete=[3])
    with pytest.raises(ValueError, match=r"has no complete checkpoint to resume from.*checkpoint-3 are incomplete"):
        resolve_resume_checkpoint(True, str(empty))
