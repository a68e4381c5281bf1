"""``ReasonMaxxerTrainer`` on a tiny local Llama: token alignment, KL anchor, training, drop-in use, errors, cache."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl.trainer.utils import selective_log_softmax, use_adapter

import trl_reasonmaxxer.trainer as trainer_module
from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer, offline
from trl_reasonmaxxer.losses import reasonmaxxer_loss, token_kl
from trl_reasonmaxxer.scoring import score_rollouts
from trl_reasonmaxxer.testing import make_tiny_tokenizer

from .helpers import (
    CallCounter,
    SimulatedCrash,
    alternating_reward,
    chat_prompts,
    make_pool,
    pool_key,
    softcapped_model,
    tiny_config,
)


# ------------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def policy_logits(trainer):
    """Captures the policy logits the loss is computed from: the LM head's first graph-building output over more
    than one position. Not the no-grad reference's, not the model's own last-position logits (``logits_to_keep=1``),
    not the copy backward recomputes (checkpointed chunks); these tiny batches fit in one loss chunk."""
    captured = []

    def hook(module, inputs, output):
        if output.requires_grad and output.shape[1] > 1 and not captured:
            output.retain_grad()
            captured.append(output)

    handle = trainer.model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def expected_decision_grad(logits, batch, fork_rows):
    """d loss / d logits of the adv_ce decision term for one fork per rollout at the given prediction rows."""
    grad = torch.zeros_like(logits)
    weights = batch["weights"]
    for b, t in enumerate(fork_rows):
        target = batch["input_ids"][b, t + 1]
        onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
        scale = -batch["advantages"][b] * weights[b] / weights.sum()
        grad[b, t] = scale * (onehot - logits[b, t].detach().softmax(-1))
    return grad


def alignment_pool():
    """Two prompts (P = 3 and P = 5), each with one success and one failure and exactly one entropy > 1."""
    return make_pool(
        {
            0: [(1.0, [0.1, 0.2, 5.0, 0.3]), (0.0, [5.0, 0.1, 0.2])],  # forks at j = 2 and j = 0
            1: [(1.0, [0.3, 5.0]), (0.0, [0.1, 0.2, 0.3, 5.0, 0.4, 0.1])],  # forks at j = 1 and j = 3
        },
        prompt_len={0: 3, 1: 5},
    )


def set_random_adapter(model, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def decision_objective(trainer) -> float:
    """The adv_ce decision loss of the current model over all training pairs (one padded batch)."""
    batch = trainer.data_collator(trainer.train_dataset.to_list())
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logps = selective_log_softmax(logits, batch["input_ids"][:, 1:])
    fork = batch["fork_mask"][:, 1:] & batch["completion_mask"][:, 1:].bool()
    _, parts = reasonmaxxer_loss(
        "adv_ce", logps, batch["base_logps"][:, 1:], batch["advantages"], fork, ~fork, batch["weights"], beta=0.0
    )
    return parts["decision_loss"].item()


def make_trainer(model_dir, output_dir, dataset=None, reward=alternating_reward, **config):
    return ReasonMaxxerTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=tiny_config(output_dir, **config),
        train_dataset=chat_prompts(3) if dataset is None else dataset,
    )


# ------------------------------------------------------------------------------------------------ token alignment


def test_fork_gate_acts_on_the_logit_that_predicts_the_gated_token(tiny_model_dir, tmp_path):
    """A fork at completion token j moves exactly the logits row at input position P + j - 1 (beta = 0)."""
    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir,
        args=tiny_config(tmp_path, fork_threshold=1.0, beta=0.0),
        rollout_dataset=alignment_pool(),
    )
    pairs = trainer.prepare_training_data()
    by_prompt = {p["prompt_index"]: p for p in pairs}
    batch = trainer.data_collator([by_prompt[0], by_prompt[1]])
    # rows: chosen(prompt 0), chosen(prompt 1), rejected(prompt 0), rejected(prompt 1)
    fork_rows = [3 + 2 - 1, 5 + 1 - 1, 3 + 0 - 1, 5 + 3 - 1]
    trainer.model.train()
    with policy_logits(trainer) as captured:
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    (logits,) = captured
    grad = logits.grad
    touched = grad.abs().sum(-1) > 0
    expected = torch.zeros_like(touched)
    for b, t in enumerate(fork_rows):
        expected[b, t] = True
    assert touched.tolist() == expected.tolist()
    assert torch.allclose(grad, expected_decision_grad(logits, batch, fork_rows), atol=1e-6)


@pytest.mark.parametrize("kl_on_prompt", [True, False])
def test_kl_anchor_covers_valid_non_fork_positions_only(tiny_model_dir, tmp_path, kl_on_prompt):
    """With a non-zero adapter and beta > 0: fork rows carry only the decision gradient, padding and the last
    position carry nothing, and prompt rows are anchored only with ``kl_on_prompt``."""
    args = tiny_config(tmp_path, fork_threshold=1.0, beta=0.5, kl_on_prompt=kl_on_prompt)
    trainer = ReasonMaxxerTrainer(model=tiny_model_dir, args=args, rollout_dataset=alignment_pool())
    pairs = {p["prompt_index"]: p for p in trainer.prepare_training_data()}
    batch = trainer.data_collator([pairs[0], pairs[1]])
    fork_rows = [4, 5, 2, 7]
    set_random_adapter(trainer.model)
    trainer.model.train()
    with policy_logits(trainer) as captured:
        trainer.compute_loss(trainer.model, batch).backward()
    (logits,) = captured
    grad = logits.grad
    assert torch.allclose(
        grad[range(4), fork_rows], expected_decision_grad(logits, batch, fork_rows)[range(4), fork_rows], atol=1e-6
    )
    lengths = batch["attention_mask"].sum(1).tolist()
    prompt_lens = [3, 5, 3, 5]
    for b in range(4):
        touched = grad[b].abs().sum(-1) > 0
        for t in range(logits.shape[1]):
            valid_prediction = t + 1 < lengths[b]  # predicts a real token
            if t == fork_rows[b]:
                assert touched[t]
            elif not valid_prediction:
                assert not touched[t], f"row {b}: padding / last position {t} got a gradient"
            elif t + 1 < prompt_lens[b]:  # predicts a prompt token
                assert bool(touched[t]) == kl_on_prompt, f"row {b}: prompt position {t}"
            else:
                assert touched[t], f"row {b}: completion position {t} is not anchored"


def test_fresh_adapter_has_zero_kl_and_scores_match_training_logprobs(tiny_model_dir, tmp_path):
    """Fresh LoRA (B = 0): the KL part is 0, and the log-probs the trainer computes at fork tokens are the base
    log-probs that scoring stored (so scoring and training agree on which logit predicts which token)."""
    pool = make_pool(
        {0: [(1.0, 4), (0.0, 6), (1.0, 3), (0.0, 5)], 1: [(0.0, 2), (1.0, 7)]}, prompt_len={0: 4, 1: 6}, scored=False
    )
    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir, args=tiny_config(tmp_path, fork_gate="all", beta=0.2), rollout_dataset=pool
    )
    pairs = trainer.prepare_training_data()
    batch = trainer.data_collator(pairs.to_list())
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = trainer._metrics["train"]
    assert abs(metrics["kl"][-1]) <= 1e-7
    # decision loss from the stored base log-probs alone, at the shifted positions
    fork = batch["fork_mask"][:, 1:]
    base = batch["base_logps"][:, 1:]
    per_seq = -(batch["advantages"][:, None] * base * fork).sum(-1) / fork.sum(-1)
    expected = (batch["weights"] * per_seq).sum() / batch["weights"].sum()
    assert metrics["decision_loss"][-1] == pytest.approx(expected.item(), abs=1e-5)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(metrics["fork/dlogp_pos"][-1]) < 1e-5 and abs(metrics["fork/dlogp_neg"][-1]) < 1e-5


# ------------------------------------------------------------------------------------------------ chunked loss


def full_logits_loss(trainer, batch):
    """The loss and KL anchor from full [B, T, V] logits of the policy and of the adapter-disabled model (the
    pre-chunking computation): log_softmax + gather, token_kl, reasonmaxxer_loss."""
    a, model = trainer.args, trainer.model
    ids, attention = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    with torch.no_grad(), use_adapter(model, None):
        ref_logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    completion = batch["completion_mask"][:, 1:].bool()
    fork = batch["fork_mask"][:, 1:] & completion
    anchor = (attention[:, 1:].bool() if a.kl_on_prompt else completion) & ~fork
    return reasonmaxxer_loss(
        a.loss_type,
        selective_log_softmax(logits, ids[:, 1:]),
        batch["base_logps"][:, 1:],
        batch["advantages"],
        fork,
        anchor,
        batch["weights"],
        kl=token_kl(logits, ref_logits),
        beta=a.beta,
    )


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # the tiny model ties lm_head
@pytest.mark.parametrize(
    "targets", [["q_proj", "v_proj"], ["lm_head"], ["q_proj", "lm_head"]], ids=["attention", "head", "both"]
)
def test_chunked_loss_equals_full_logits_loss_and_reference_is_the_base_head(
    tiny_model_dir, tmp_path, monkeypatch, targets
):
    """Loss, KL anchor and LoRA gradients of compute_loss, with one position per chunk, equal the full-logits
    computation. With a LoRA on lm_head the reference must still be the base head: the KL is then positive even
    when the head is the only adapted module (the adapted head as reference would give exactly 0)."""
    monkeypatch.setattr(trainer_module, "LOSS_CHUNK_TOKENS", 4)  # 4 rows: one position per chunk
    args = tiny_config(tmp_path, fork_threshold=1.0, beta=0.5)
    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir,
        args=args,
        rollout_dataset=alignment_pool(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=targets),
    )
    pairs = {p["prompt_index"]: p for p in trainer.prepare_training_data()}
    batch = trainer.data_collator([pairs[0], pairs[1]])
    set_random_adapter(trainer.model)
    trainer.model.train()
    lora = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lm_head" in n for n in lora) == ("lm_head" in targets)

    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in lora.items()}
    trainer.model.zero_grad()
    expected, parts = full_logits_loss(trainer, batch)
    expected.backward()

    kl = trainer._metrics["train"]["kl"][-1]
    assert kl > 1e-4
    assert kl == pytest.approx(parts["kl"].item(), rel=1e-4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, param in lora.items():
        assert torch.allclose(grads[name], param.grad, atol=1e-6), name


def test_model_that_transforms_its_logits_is_refused_at_the_first_step(tmp_path):
    """The loss projects hidden states through the LM head itself; a model that soft-caps its logits after the head
    would train against the wrong distribution, so the first compute_loss stops with an error naming the cause."""
    tokenizer = make_tiny_tokenizer()
    pool = make_pool({0: [(1.0, [0.1, 5.0]), (0.0, [5.0, 0.1])]})
    trainer = ReasonMaxxerTrainer(
        model=softcapped_model(tokenizer),
        args=tiny_config(tmp_path, fork_threshold=1.0),
        rollout_dataset=pool,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=2, target_modules=["q_proj"]),
    )
    batch = trainer.data_collator(trainer.prepare_training_data().to_list())
    with pytest.raises(ValueError, match="soft-capping or scaling"):
        trainer.compute_loss(trainer.model, batch)


# ------------------------------------------------------------------------------------------------ training


def test_train_changes_only_lora_parameters(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=3, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert all(torch.all(p == 0) for n, p in before.items() if "lora_B" in n)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(not after[n].requires_grad for n in before if "lora_" not in n)
    for name, value in before.items():
        if "lora_" not in name:
            assert torch.equal(after[name], value), f"base weight {name} changed"
    assert any(not torch.equal(after[n], before[n]) for n in lora if "lora_B" in n)
    # the adapter-disabled model is still exactly the base model on disk
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([trainer.offline.prompt_ids[0]])
    trainer.model.eval()
    with torch.no_grad(), use_adapter(trainer.model, None):
        disabled = trainer.model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(disabled, base(input_ids=ids).logits)
        assert not torch.equal(trainer.model(input_ids=ids).logits, disabled)


def test_train_learns_a_toy_task(tiny_model_dir, tmp_path):
    """Reward 1 when the first completion word is a digit: training raises P(first token is a digit) and lowers
    the decision objective on the training pairs."""
    digits = make_tiny_tokenizer().convert_tokens_to_ids([str(i) for i in range(10)])

    def digit_first(completions, completion_ids, **kwargs):
        return [float(len(ids) > 0 and ids[0] in digits) for ids in completion_ids]

    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        dataset=chat_prompts(4),
        reward=digit_first,
        num_generations=8,
        max_completion_length=2,
        fork_gate="all",
        max_steps=20,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
    )

    def p_digit():
        with torch.no_grad():
            probs = [
                trainer.model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)[digits].sum().item()
                for ids in trainer.offline.prompt_ids
            ]
        return sum(probs) / len(probs)

    trainer.model.eval()
    p_before = p_digit()
    trainer.train()
    assert trainer.state.global_step == 20
    assert trainer.pool_stats["pool/prompts_selected"] >= 2
    trainer.model.eval()
    p_after = p_digit()
    decision_after = decision_objective(trainer)
    with use_adapter(trainer.model, None):
        decision_before = decision_objective(trainer)
        assert p_digit() == pytest.approx(p_before, abs=1e-7)
    assert p_after > p_before + 1e-3, (p_before, p_after)
    assert decision_after < decision_before - 1e-2, (decision_before, decision_after)


# ------------------------------------------------------------------------------------------------ drop-in


def test_grpo_script_runs_with_the_two_names_swapped(tiny_model_dir, tmp_path, caplog):
    """A GRPOTrainer script, only ``GRPOTrainer``/``GRPOConfig`` renamed: it trains, saves a loadable adapter, and
    the GRPO-only arguments are reported once."""
    from peft import PeftModel

    from trl_reasonmaxxer import ReasonMaxxerConfig as GRPOConfig
    from trl_reasonmaxxer import ReasonMaxxerTrainer as GRPOTrainer

    caplog.set_level(logging.WARNING)
    seen = {}

    # --- the script ---------------------------------------------------------------------------------------
    dataset = Dataset.from_dict({"prompt": [f"what is {i} plus {i} ?" for i in range(3)], "answer": ["0", "2", "4"]})

    def reward_func(completions, answer, **kwargs):
        seen.setdefault("answer", answer)
        return [float(i % 2) for i in range(len(completions))]

    training_args = GRPOConfig(
        output_dir=str(tmp_path / "grpo-out"),
        num_generations=4,
        max_completion_length=4,
        learning_rate=1e-2,
        logging_steps=1,
        beta=0.04,
        loss_type="dapo",
        scale_rewards="batch",
        use_vllm=False,
        max_steps=2,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        warmup_steps=0,
    )
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[reward_func], args=training_args, train_dataset=dataset)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    # ------------------------------------------------------------------------------------------------------

    assert trainer.state.global_step == 2
    assert trainer.args.beta == 0.04 and trainer.args.loss_type == "adv_ce"
    assert seen["answer"][:4] == ["0"] * 4  # extra columns reach the reward function, one per completion
    messages = [r.getMessage() for r in caplog.records]
    assert sum("scale_rewards" in m for m in messages) == 1
    assert sum("loss_type='dapo'" in m for m in messages) == 1
    assert not any("use_vllm" in m or "num_generations" in m or "beta" in m for m in messages)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, training_args.output_dir)
    ids = torch.tensor([trainer.offline.prompt_ids[1]])
    trainer.model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6)
        with loaded.disable_adapter():
            assert not torch.allclose(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6)


def test_model_card_names_the_method(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path))
    trainer.create_model_card()
    text = (tmp_path / "README.md").read_text()
    assert "ReasonMaxxer" in text
    front_matter = text.split("---")[1]
    tags = re.findall(r"^- (\S+)$", front_matter, flags=re.MULTILINE)
    assert "reasonmaxxer" in tags and "trl" in tags
    assert "2605.06241" in text  # the paper


# ------------------------------------------------------------------------------------------------ bad input


def test_error_without_prompt_column(tiny_model_dir, tmp_path):
    dataset = Dataset.from_dict({"question": ["what is 1 plus 1 ?"]})
    with pytest.raises(ValueError, match=r"no `prompt` column.*question"):
        make_trainer(tiny_model_dir, tmp_path, dataset=dataset)


def test_error_on_empty_dataset(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        make_trainer(tiny_model_dir, tmp_path, dataset=Dataset.from_dict({"prompt": []}))


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


@pytest.mark.parametrize("num_generations", [1, 0, None])
def test_error_num_generations_below_two(tmp_path, num_generations):
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        ReasonMaxxerConfig(output_dir=str(tmp_path), num_generations=num_generations, use_cpu=True, report_to="none")


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
