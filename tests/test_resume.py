"""``resume_from_checkpoint``: a crashed run continues from the cached pool and its checkpoint, and ends where an
uninterrupted run ends."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from trl_reasonmaxxer import ReasonMaxxerTrainer, offline

from .helpers import CallCounter, SimulatedCrash, alternating_reward, chat_prompts, tiny_config


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedCrash(f"simulated crash after step {self.step}")


def make_trainer(model_dir, output_dir, **config):
    # 4 optimiser steps of 2 accumulated pairs: the checkpoint falls mid-epoch, so resuming must skip exactly the
    # batches already trained, with the same shuffled order
    args = tiny_config(output_dir, max_steps=4, gradient_accumulation_steps=2, learning_rate=1e-2, **config)
    return ReasonMaxxerTrainer(model_dir, alternating_reward, args=args, train_dataset=chat_prompts(4))


def adapter(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}


def test_resumed_run_matches_uninterrupted_run_without_regenerating(tiny_model_dir, tmp_path, monkeypatch):
    uninterrupted = make_trainer(tiny_model_dir, tmp_path / "straight")
    uninterrupted.train()
    expected = adapter(uninterrupted)

    run_dir = tmp_path / "crashed"
    crashed = make_trainer(tiny_model_dir, run_dir, save_strategy="steps", save_steps=2)
    crashed.add_callback(CrashAtStep(3))
    with pytest.raises(SimulatedCrash):
        crashed.train()
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint-")) == ["checkpoint-2"]
    after_crash = adapter(crashed)

    generate = CallCounter(offline.generate_completions)
    score = CallCounter(offline.score_rollouts)
    monkeypatch.setattr(offline, "generate_completions", generate)
    monkeypatch.setattr(offline, "score_rollouts", score)
    resumed = make_trainer(tiny_model_dir, run_dir, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)

    assert generate.calls == 0 and score.calls == 0  # the pool and its scores come from the cache
    assert resumed.state.global_step == 4
    assert resumed.train_dataset.to_list() == uninterrupted.train_dataset.to_list()
    assert any(not torch.equal(after_crash[n], expected[n]) for n in expected)  # the crash did lose steps 3-4
    for name, value in adapter(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6, rtol=0), name


def test_same_seed_gives_the_same_adapter_init_whatever_ran_before(tiny_model_dir, tmp_path):
    """The LoRA init is seeded by ``args.seed``, not by whatever consumed the global RNG earlier in the process."""
    first = adapter(make_trainer(tiny_model_dir, tmp_path / "a"))
    torch.rand(100)
    second = adapter(make_trainer(tiny_model_dir, tmp_path / "b"))
    assert all(torch.equal(first[n], second[n]) for n in first)
    other = adapter(make_trainer(tiny_model_dir, tmp_path / "c", seed=1))
    assert any(not torch.equal(first[n], other[n]) for n in first if "lora_A" in n)


def test_resume_skips_a_checkpoint_cut_off_mid_save(tiny_model_dir, tmp_path, caplog):  # audit D-8
    uninterrupted = make_trainer(tiny_model_dir, tmp_path / "straight")
    uninterrupted.train()
    run_dir = tmp_path / "cut"
    make_trainer(tiny_model_dir, run_dir, save_strategy="steps", save_steps=2).train()
    for name in ("trainer_state.json", "optimizer.pt"):  # what a kill during the save of checkpoint-4 leaves out
        os.remove(run_dir / "checkpoint-4" / name)

    resumed = make_trainer(tiny_model_dir, run_dir, save_strategy="steps", save_steps=2)
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete.*Resume from .*checkpoint-2"):
        resumed.train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))
    with caplog.at_level("WARNING", logger="trl_reasonmaxxer.inputs"):
        resumed.train(resume_from_checkpoint=True)
    assert "Skipping incomplete checkpoint" in caplog.text and "resuming from" in caplog.text
    assert resumed.state.global_step == 4
    expected = adapter(uninterrupted)
    for name, value in adapter(resumed).items():
        assert torch.allclose(value, expected[name], atol=1e-6, rtol=0), name
