"""``ReasonMaxxerTrainer`` on a tiny local Llama: token alignment, KL anchor, training, drop-in use, errors, cache."""

from __future__ import annotations

import contextlib
import logging
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl.trainer.utils import selective_log_softmax, use_adapter

import trl_reasonmaxxer.trainer as trainer_module
from trl_reasonmaxxer import ReasonMaxxerTrainer
from trl_reasonmaxxer.losses import reasonmaxxer_loss, token_kl
from trl_reasonmaxxer.testing import make_tiny_tokenizer

from .helpers import (
    chat_prompts,
    make_pool,
    make_trainer,
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
