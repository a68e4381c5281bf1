"""The offline phase (``trl_reasonmaxxer.offline``): its pure steps without a model, then on the tiny local Llama the
errors it explains, and the rollout cache it resumes from. Case ids (D-1, F8, ...) refer to the reliability audit."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from trl_reasonmaxxer import ReasonMaxxerTrainer, cache, offline
from trl_reasonmaxxer.offline import pairs_from_scored_pool, select_rollouts
from trl_reasonmaxxer.scoring import score_rollouts
from trl_reasonmaxxer.testing import make_tiny_tokenizer

from .helpers import (
    CallCounter,
    SimulatedCrash,
    alternating_reward,
    chat_prompts,
    make_pool,
    make_trainer,
    pool_key,
    tiny_config,
)


def scores_of(rows: list[dict]) -> dict[int, tuple[list[float], list[float]]]:
    """The scores a hand-made pool carries (``make_pool(scored=True)``), as OfflinePhase.score returns them."""
    return {i: (r["entropy"], r["logps"]) for i, r in enumerate(rows)}


# ------------------------------------------------------------------------------------------------ select → gate → pair


def test_selection_masks_ungraded_and_truncated_rewards_and_keeps_rows_that_train(tmp_path):
    """None rewards and, with mask_truncated_completions, truncated rollouts become NaN (ignored, rows kept in place);
    rollouts with A = 0 are not kept; the pool passed in is not modified."""
    rows = make_pool(
        {
            0: [(1.0, [0.1, 2.0]), (0.0, [2.0, 0.1]), (None, [0.3]), (1.0, [0.2, 0.2], True)],
            1: [(1.0, [0.4]), (1.0, [0.5])],  # always solved: not selected
        }
    ).to_list()
    original = [dict(r) for r in rows]
    chosen = select_rollouts(rows, tiny_config(tmp_path, mask_truncated_completions=True), kept_in="here")
    assert rows == original
    assert [r["reward"] for r in chosen.rows][:2] == [1.0, 0.0]
    assert math.isnan(chosen.rows[2]["reward"]) and math.isnan(chosen.rows[3]["reward"])  # ungraded, truncated
    assert chosen.report.selected == [0] and chosen.row_ids == [0, 1]
    assert chosen.advantages == [pytest.approx(1.0), pytest.approx(-1.0)]  # (r - 0.5) / 0.5


def test_no_mixed_prompt_is_explained_and_names_where_the_rollouts_are(tmp_path):
    rows = make_pool({0: [(1.0, [0.1]), (1.0, [0.2])], 1: [(0.0, [0.3]), (0.0, [0.4])]}).to_list()
    with pytest.raises(ValueError, match=r"No prompt has mixed success.*1 always solved.*kept in the cache folder"):
        select_rollouts(rows, tiny_config(tmp_path), kept_in="the cache folder")


def test_pairs_gate_the_scored_entropies_and_count_the_pool(tmp_path):
    """Forks are the positions whose base entropy is above τ; each item pairs a positive with a negative rollout of
    a prompt and carries the scores it was given; the statistics count the pool, the selection and the gate."""
    rows = make_pool(
        {0: [(1.0, [0.1, 5.0]), (0.0, [5.0, 0.2, 0.3])], 1: [(1.0, [0.3, 0.1, 5.0]), (0.0, [0.2]), (1.0, [0.1])]}
    ).to_list()
    args = tiny_config(tmp_path, fork_threshold=1.0)
    chosen = select_rollouts(rows, args, kept_in="here")
    scores = scores_of(chosen.rows)
    items, stats = pairs_from_scored_pool(chosen, scores, args, kept_in="here")
    signs = [(p["prompt_index"], p["chosen_advantage"] > 0, p["rejected_advantage"] > 0) for p in items]
    assert signs == [(0, True, False), (1, True, False), (1, True, True)]  # the odd rollout out is paired with itself
    assert [(p["chosen_weight"], p["rejected_weight"]) for p in items] == [(1.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
    for item in items:
        for side in ("chosen", "rejected"):
            entropy = next(r["entropy"] for r in rows if r["completion_ids"] == item[f"{side}_completion_ids"])
            assert item[f"{side}_fork_mask"] == [h > 1.0 for h in entropy]
            assert item[f"{side}_logps"] == [-1.0] * len(entropy)
    assert stats["pool/prompts"] == 2 and stats["pool/prompts_selected"] == 2 and stats["pool/rollouts_selected"] == 5
    assert stats["pool/pairs"] == len(items) and stats["fork/threshold"] == 1.0
    assert stats["fork/gated_fraction"] == pytest.approx(3 / 10)
    assert stats["pool/reward"] == pytest.approx(3 / 5)


def test_tau_is_calibrated_on_the_rollouts_that_train_only(tmp_path):
    """A rollout with no reward (NaN, A = 0) never trains, so its entropies must not move τ (audit F9): here its
    four 9-nat tokens would have taken the whole 25% budget (τ 0.8 instead of 0.6)."""
    rows = make_pool({0: [(1.0, [0.1, 0.2, 0.3, 0.4]), (0.0, [0.5, 0.6, 0.7, 0.8]), (None, [9.0, 9.0, 9.0, 9.0])]})
    args = tiny_config(tmp_path, fork_fraction=0.25)
    chosen = select_rollouts(rows.to_list(), args, kept_in="here")
    _, stats = pairs_from_scored_pool(chosen, scores_of(chosen.rows), args, kept_in="here")
    assert stats["fork/threshold"] == pytest.approx(0.6)
    assert stats["fork/gated_fraction"] == pytest.approx(0.25)
    assert stats["pool/rollouts_selected"] == 2


def test_too_few_items_for_one_batch_are_refused_with_the_fix(tmp_path):
    rows = make_pool({0: [(1.0, [0.1, 5.0]), (0.0, [5.0, 0.2])]}).to_list()
    args = tiny_config(tmp_path, fork_threshold=1.0, per_device_train_batch_size=2, dataloader_drop_last=True)
    chosen = select_rollouts(rows, args, kept_in="here")
    with pytest.raises(ValueError, match=r"left 1 training items, fewer than one batch \(2\).*drop_last=False"):
        pairs_from_scored_pool(chosen, scores_of(chosen.rows), args, kept_in="here")


def test_pool_diagnosis_names_the_reward_scale_truncation_and_ungraded_rows(tmp_path):  # D-2, C28
    rows = [
        {"prompt_index": 0, "reward": 0.4, "truncated": False},
        {"prompt_index": 0, "reward": 0.1, "truncated": False},
        {"prompt_index": 1, "reward": float("nan"), "truncated": True},
        {"prompt_index": 1, "reward": float("nan"), "truncated": False},
    ]
    text = offline.pool_diagnosis(
        rows, tiny_config(tmp_path, mask_truncated_completions=True, max_completion_length=8)
    )
    assert "Rewards range from 0.1 to 0.4 over 2 graded rollouts" in text
    assert "1 prompt has rewards that differ between rollouts" in text and "success threshold" in text
    assert "1 of 4 rollouts hit max_completion_length=8 and were ignored" in text
    assert "1 rollouts have no reward" in text


# ------------------------------------------------------------------------------------------------ errors on the tiny model


def test_error_chat_prompts_without_chat_template(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no chat template") as err:
        trainer = ReasonMaxxerTrainer(
            model=tiny_model_dir,
            reward_funcs=alternating_reward,
            args=tiny_config(tmp_path),
            train_dataset=chat_prompts(2),
            processing_class=make_tiny_tokenizer(chat_template=False),
        )
        trainer.train()
    assert "chat_template" in str(err.value) and "plain strings" in str(err.value)


def test_reward_function_error_keeps_rollouts_and_rerun_does_not_regenerate(tiny_model_dir, tmp_path, monkeypatch):
    def broken(completions, **kwargs):
        raise ZeroDivisionError("oops")

    real_generate = offline.generate_completions
    counter = CallCounter(real_generate)
    monkeypatch.setattr(offline, "generate_completions", counter)
    trainer = make_trainer(tiny_model_dir, tmp_path, reward=broken)
    with pytest.raises(RuntimeError) as err:
        trainer.train()
    message = str(err.value)
    assert "broken" in message and "ZeroDivisionError" in message and "oops" in message
    assert "rollouts are kept" in message and trainer.rollout_cache_dir in message
    assert counter.calls == 3
    chunks = sorted(os.listdir(Path(trainer.rollout_cache_dir) / "generations"))
    assert chunks == ["chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"]

    rerun = CallCounter(real_generate)
    monkeypatch.setattr(offline, "generate_completions", rerun)
    fixed = make_trainer(tiny_model_dir, tmp_path)
    assert fixed.rollout_cache_dir == trainer.rollout_cache_dir
    fixed.train()
    assert rerun.calls == 0
    assert fixed.state.global_step == 2


def test_error_wrong_number_of_rewards(tiny_model_dir, tmp_path):
    def short(completions, **kwargs):
        return [1.0, 0.0, 1.0]

    with pytest.raises(ValueError, match=r"'short' returned 3 rewards for 12 completions"):
        make_trainer(tiny_model_dir, tmp_path, reward=short).train()


def test_error_all_none_rewards(tiny_model_dir, tmp_path):
    def unparsable(completions, **kwargs):
        return [None] * len(completions)

    with pytest.raises(ValueError, match=r"only None/NaN for all 12 completions") as err:
        make_trainer(tiny_model_dir, tmp_path, reward=unparsable).train()
    assert "answer" in str(err.value)  # the dataset columns the reward reads


def test_error_no_mixed_success_prompt(tiny_model_dir, tmp_path):
    def always_right(completions, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(ValueError, match="No prompt has mixed success") as err:
        make_trainer(tiny_model_dir, tmp_path, reward=always_right).train()
    message = str(err.value)
    assert "3 always solved" in message and "0 never solved" in message and "0 mixed" in message
    assert "num_generations" in message and "temperature" in message

    def always_wrong(completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="0 always solved, 3 never solved"):
        make_trainer(tiny_model_dir, tmp_path, reward=always_wrong).train()


def test_error_gate_selects_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="selected no token") as err:
        make_trainer(tiny_model_dir, tmp_path, fork_threshold=1e9).train()
    assert "fork_threshold" in str(err.value)


def test_pool_with_missing_rewards_ignores_those_rollouts(tiny_model_dir, tmp_path):
    """A passed-in pool may hold None rewards (a reward function's "cannot grade"): those rollouts are ignored."""
    pool = make_pool({0: [(1.0, [0.1, 3.0]), (0.0, [3.0, 0.2]), (None, [3.0, 3.0]), (1.0, [0.1, 3.0, 0.2])]})
    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir, args=tiny_config(tmp_path, fork_threshold=1.0), rollout_dataset=pool
    )
    pairs = trainer.prepare_training_data()
    used = {tuple(p[f"{s}_completion_ids"]) for p in pairs for s in ("chosen", "rejected")}
    assert tuple(pool[2]["completion_ids"]) not in used
    assert len(used) == 3


# ------------------------------------------------------------------------------------------------ rollout cache


def test_interrupted_offline_phase_resumes_and_cache_is_reused(tiny_model_dir, tmp_path, monkeypatch):
    real_generate = offline.generate_completions
    reference = make_trainer(tiny_model_dir, tmp_path / "uninterrupted").build_rollout_dataset()

    crash = CallCounter(real_generate, fail_on=2)
    monkeypatch.setattr(offline, "generate_completions", crash)
    with pytest.raises(SimulatedCrash):
        make_trainer(tiny_model_dir, tmp_path / "run").train()
    crashed = make_trainer(tiny_model_dir, tmp_path / "run")
    assert os.listdir(Path(crashed.rollout_cache_dir) / "generations") == ["chunk-00000.jsonl"]

    resume = CallCounter(real_generate)
    monkeypatch.setattr(offline, "generate_completions", resume)
    resumed = make_trainer(tiny_model_dir, tmp_path / "run")
    resumed.train()
    assert resume.calls == 2  # only the two missing chunks
    pool = load_from_disk(os.path.join(resumed.rollout_cache_dir, "pool"))
    assert pool_key(pool) == pool_key(reference)

    again = CallCounter(real_generate)
    scorer = CallCounter(offline.score_rollouts)
    monkeypatch.setattr(offline, "generate_completions", again)
    monkeypatch.setattr(offline, "score_rollouts", scorer)
    second = make_trainer(tiny_model_dir, tmp_path / "run")
    second.train()
    assert again.calls == 0 and scorer.calls == 0
    assert second.train_dataset.to_list() == resumed.train_dataset.to_list()


def test_runs_with_their_own_output_dir_share_a_pool_through_rollout_cache_root(tiny_model_dir, tmp_path, monkeypatch):
    shared = tmp_path / "pool"
    first = make_trainer(tiny_model_dir, tmp_path / "beta0.1", rollout_cache_root=str(shared))
    pool = first.build_rollout_dataset()
    assert Path(first.rollout_cache_dir).parent == shared and not (tmp_path / "beta0.1" / "rollouts").exists()
    generate = CallCounter(offline.generate_completions)
    monkeypatch.setattr(offline, "generate_completions", generate)
    second = make_trainer(tiny_model_dir, tmp_path / "beta0.5", rollout_cache_root=str(shared), beta=0.5)
    assert pool_key(second.build_rollout_dataset()) == pool_key(pool)
    assert generate.calls == 0 and second.rollout_cache_dir == first.rollout_cache_dir
    make_trainer(tiny_model_dir, tmp_path / "alone").build_rollout_dataset()  # its own output_dir/rollouts
    assert generate.calls > 0 and (tmp_path / "alone" / "rollouts").is_dir()


def test_cache_reuse_with_another_chunk_size_keeps_every_prompt(tiny_model_dir, tmp_path):
    """Changing ``rollout_chunk_size`` between runs must not mix up which cached rows belong to which prompt."""
    first = make_trainer(tiny_model_dir, tmp_path, rollout_chunk_size=1).build_rollout_dataset()
    assert Counter(first["prompt_index"]) == {0: 4, 1: 4, 2: 4}
    trainer = make_trainer(tiny_model_dir, tmp_path, rollout_chunk_size=2)
    pool = trainer.build_rollout_dataset()
    assert Counter(pool["prompt_index"]) == {0: 4, 1: 4, 2: 4}
    for row in pool:
        assert row["prompt_ids"] == trainer.offline.prompt_ids[row["prompt_index"]]


@pytest.mark.parametrize("per_call, expected", [(1, 8), (5, 10), (3, 9), (8, 8), (32, 32)])
def test_default_chunk_size_ends_on_a_generate_call_boundary(per_call, expected):
    from trl_reasonmaxxer.cache import default_chunk_size

    assert default_chunk_size(per_call) == expected


def test_default_chunk_size_follows_the_generate_batch_and_an_explicit_one_is_kept(tiny_model_dir, tmp_path):
    # 12 sequences per call / 4 generations = 3 prompts per call → chunks of 9 prompts, i.e. exactly 3 calls each
    trainer = make_trainer(tiny_model_dir, tmp_path, rollout_chunk_size=None, rollout_batch_size=12)
    assert trainer.offline.chunk_size == 9
    assert make_trainer(tiny_model_dir, tmp_path, rollout_chunk_size=2, rollout_batch_size=12).offline.chunk_size == 2


def test_cached_scores_follow_their_rollouts_when_truncated_ones_are_masked(tiny_model_dir, tmp_path):
    """Scores cached by one run must not be attached to other rollouts in a run that drops truncated rollouts."""
    pool = make_pool(
        {
            0: [(1.0, 5, True), (1.0, 2), (0.0, 3), (0.0, 4)],
            1: [(1.0, 6), (0.0, 7), (1.0, 8), (0.0, 9)],
        },
        scored=False,
    )
    ReasonMaxxerTrainer(
        model=tiny_model_dir, args=tiny_config(tmp_path, fork_gate="all"), rollout_dataset=pool
    ).prepare_training_data()
    masked = ReasonMaxxerTrainer(
        model=tiny_model_dir,
        args=tiny_config(tmp_path, fork_gate="all", mask_truncated_completions=True),
        rollout_dataset=pool,
    )
    pairs = masked.prepare_training_data()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pad = make_tiny_tokenizer().pad_token_id
    for pair in pairs:
        for side in ("chosen", "rejected"):
            completion = pair[f"{side}_completion_ids"]
            assert len(completion) != 5  # the truncated rollout is gone
            assert len(pair[f"{side}_logps"]) == len(pair[f"{side}_fork_mask"]) == len(completion)
            ((_, fresh),) = score_rollouts(base, [(pair["prompt_ids"], completion)], pad, disable_progress=True)
            assert pair[f"{side}_logps"] == pytest.approx(fresh, abs=1e-5)


def test_model_fingerprint_sees_every_base_weight(tiny_model_dir):  # D-1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = cache.model_fingerprint(model)
    assert cache.model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) == before
    for name, param in model.named_parameters():  # one element of any tensor changes the fingerprint
        with torch.no_grad():
            original = param.view(-1)[-1].item()
            param.view(-1)[-1] += 1e-3
            assert cache.model_fingerprint(model) != before, name
            param.view(-1)[-1] = original
        assert cache.model_fingerprint(model) == before


def test_a_model_changed_in_place_is_sampled_again(tiny_model_dir, tmp_path, monkeypatch, caplog):  # D-1, F13
    first = make_trainer(tiny_model_dir, tmp_path, max_steps=1, learning_rate=0.5)
    first.train()
    merged = first.model.merge_and_unload()  # the next round starts from the merged model, same config and path
    counter = CallCounter(offline.generate_completions)
    monkeypatch.setattr(offline, "generate_completions", counter)
    second = ReasonMaxxerTrainer(
        merged, alternating_reward, args=tiny_config(tmp_path, max_steps=1), train_dataset=chat_prompts(3)
    )
    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.offline"):
        second.train()
    assert second.rollout_cache_dir != first.rollout_cache_dir and counter.calls == 3
    assert "1 other rollout cache" in caplog.text and "not reused" in caplog.text


def test_damaged_cache_chunks_are_made_again(tiny_model_dir, tmp_path, monkeypatch, caplog):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    trainer.train()
    cache = Path(trainer.rollout_cache_dir)
    (cache / "generations" / "chunk-00001.jsonl").write_text('{"prompt_index": 1, "prompt_ids"')  # cut mid-line
    scores = sorted((cache / "scores").iterdir())
    rows = [json.loads(line) for line in scores[0].read_text().splitlines()]
    rows[0]["entropy"] = rows[0]["entropy"][:-1]  # one score short
    scores[0].write_text("".join(json.dumps(r) + "\n" for r in rows))
    generate = CallCounter(offline.generate_completions)
    score = CallCounter(offline.score_rollouts)
    monkeypatch.setattr(offline, "generate_completions", generate)
    monkeypatch.setattr(offline, "score_rollouts", score)
    with caplog.at_level(logging.WARNING):
        rerun = make_trainer(tiny_model_dir, tmp_path)
        rerun.train()
    assert generate.calls == 1 and score.calls >= 1 and rerun.state.global_step == 2
    assert "unreadable cache chunk" in caplog.text and "do not fit their rollouts" in caplog.text


def test_a_file_in_the_pools_place_is_replaced(tiny_model_dir, tmp_path):  # F8
    make_trainer(tiny_model_dir, tmp_path).train()
    (pool_dir,) = tmp_path.glob("rollouts/*/pool")

    shutil.rmtree(pool_dir)
    pool_dir.write_text("x")
    (pool_dir.parent / "pool.tmp").mkdir()  # left by an older, killed run
    trainer = make_trainer(tiny_model_dir, tmp_path)
    trainer.train()
    assert pool_dir.is_dir() and not list(pool_dir.parent.glob("pool.tmp*"))
