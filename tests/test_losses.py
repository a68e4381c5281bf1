"""ReasonMaxxer losses (``trl_reasonmaxxer.losses``): signs, gradients, masks, normalisation and bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trl_reasonmaxxer import losses


def mask(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# ----------------------------------------------------------------------------------------------- adv_ce


@pytest.mark.parametrize("advantage", [1.5, -1.5])
def test_adv_ce_sgd_step_moves_fork_logprob_with_the_advantage(advantage):
    """One SGD step on leaf logits: log π(token) at the fork rises for A > 0 and falls for A < 0."""
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[3, 1, 6, 0]])
    fork = mask([False, True, False, True])

    def fork_logps(lg):
        return torch.gather(lg.log_softmax(-1), -1, targets[..., None])[..., 0]

    before = fork_logps(logits).detach()
    loss = losses.adv_ce_per_sequence(fork_logps(logits), torch.tensor([advantage], dtype=torch.float64), fork)
    loss.sum().backward()
    with torch.no_grad():
        after = fork_logps(logits - 0.5 * logits.grad)
    change = (after - before)[0]
    if advantage > 0:
        assert (change[fork[0]] > 0).all()
    else:
        assert (change[fork[0]] < 0).all()
    assert torch.all(logits.grad[0, ~fork[0]] == 0)  # rows without a fork get no gradient at all


def test_adv_ce_value_is_mean_over_forks_of_minus_a_logp():
    logps = leaf([[-1.0, -2.0, -3.0, -4.0]])
    out = losses.adv_ce_per_sequence(logps, torch.tensor([2.0], dtype=torch.float64), mask([True, False, True, False]))
    assert out.item() == pytest.approx(-2.0 * (-1.0 - 3.0) / 2)
    out.sum().backward()
    assert logps.grad.tolist() == [[-1.0, 0.0, -1.0, 0.0]]


def test_adv_ce_rollout_without_fork_contributes_zero():
    logps = leaf([[-1.0, -2.0]])
    out = losses.adv_ce_per_sequence(logps, torch.tensor([1.0], dtype=torch.float64), mask([False, False]))
    assert out.item() == 0.0 and math.isfinite(out.item())


def _batch():
    """Two sequences, prediction axis of length 6: [prompt, prompt, completion..., pad]."""
    logps = leaf([[-0.5, -0.7, -1.0, -2.0, -0.1, -9.0], [-0.3, -0.4, -1.05, -0.2, -9.0, -9.0]])
    kl = leaf([[0.3, 0.1, 0.2, 0.4, 0.5, 7.0], [0.2, 0.6, 0.1, 0.3, 7.0, 7.0]])
    valid = mask([True, True, True, True, True, False], [True, True, True, True, False, False])
    fork = mask([False, False, False, True, False, False], [False, False, True, False, False, False])
    anchor = valid & ~fork
    base = torch.full_like(logps, -1.0)
    return logps, kl, base, fork, anchor


@pytest.mark.parametrize("loss_type", ["adv_ce", "adv_ratio", "fork_dpo"])
def test_masked_positions_contribute_nothing(loss_type):
    """Prompt, padding and ungated positions leave the decision term unchanged and get exactly zero gradient from
    it; fork and padding positions likewise leave the KL anchor unchanged."""
    logps, kl, base, fork, anchor = _batch()
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    loss, _ = losses.reasonmaxxer_loss(loss_type, logps, base, adv, fork, anchor, w, kl=kl, beta=0.2)
    loss.backward()
    assert torch.all(logps.grad[~fork] == 0)
    assert torch.all(logps.grad[fork] != 0)
    assert torch.all(kl.grad[~anchor] == 0)
    assert torch.all(kl.grad[anchor] > 0)

    with torch.no_grad():
        logps2, kl2 = logps.clone(), kl.clone()
        logps2[~fork] += torch.randn(int((~fork).sum()), dtype=torch.float64) * 5
        kl2[~anchor] += 100.0
        loss2, _ = losses.reasonmaxxer_loss(loss_type, logps2, base, adv, fork, anchor, w, kl=kl2, beta=0.2)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-12)


def test_each_sequence_weighs_the_same_whatever_its_number_of_forks():
    logps = torch.full((2, 12), -2.0, dtype=torch.float64)
    fork = torch.zeros(2, 12, dtype=torch.bool)
    fork[0, :10] = True  # 10 forks
    fork[1, 5] = True  # 1 fork
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    per_seq = losses.adv_ce_per_sequence(logps, adv, fork)
    assert per_seq.tolist() == pytest.approx([2.0, 2.0])
    kl = torch.zeros_like(logps)
    kl[0] = 0.5
    kl[1] = 0.5
    anchor = ~fork
    _, parts = losses.reasonmaxxer_loss("adv_ce", logps, logps, adv, fork, anchor, torch.ones(2), kl=kl)
    assert parts["decision_loss"].item() == pytest.approx(2.0)
    assert parts["kl"].item() == pytest.approx(0.5)  # 2 anchor positions vs 11: still a per-sequence mean


def test_weights_scale_rows_and_the_batch_divides_by_its_row_count():
    """Normalised by the number of rows (a constant), not by the weight sum: a rollout's share of the loss never
    depends on the weights of the rows it is batched with (audit F1: Σw made a 19/1 rollout weigh 1.9x)."""
    logps = torch.tensor([[-1.0, -1.0], [-3.0, -3.0]], dtype=torch.float64)
    fork = mask([True, True], [True, False])
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    anchor = ~fork
    args = ("adv_ce", logps, logps, adv, fork, anchor)
    loss, parts = losses.reasonmaxxer_loss(*args, torch.tensor([1.0, 0.0], dtype=torch.float64), beta=0.0)
    assert loss.item() == pytest.approx(1.0 / 2)
    loss, _ = losses.reasonmaxxer_loss(*args, torch.tensor([3.0, 1.0], dtype=torch.float64), beta=0.0)
    assert loss.item() == pytest.approx((3 * 1.0 + 1 * 3.0) / 2)
    loss, _ = losses.reasonmaxxer_loss(*args, torch.tensor([0.5, 0.5], dtype=torch.float64), beta=0.0)
    assert loss.item() == pytest.approx((0.5 * 1.0 + 0.5 * 3.0) / 2)  # the old Σw normalisation gave 2.0
    loss, _ = losses.reasonmaxxer_loss(*args, torch.ones(2, dtype=torch.float64), beta=0.0)
    assert loss.item() == pytest.approx(2.0)


def test_total_is_decision_plus_beta_kl():
    logps, kl, base, fork, anchor = _batch()
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    loss, parts = losses.reasonmaxxer_loss("adv_ce", logps, base, adv, fork, anchor, w, kl=kl, beta=0.37)
    assert loss.item() == pytest.approx(parts["decision_loss"].item() + 0.37 * parts["kl"].item())
    expected_kl = ((0.3 + 0.1 + 0.2 + 0.5) / 4 + (0.2 + 0.6 + 0.3) / 3) / 2
    assert parts["kl"].item() == pytest.approx(expected_kl)
    no_kl, parts = losses.reasonmaxxer_loss("adv_ce", logps, base, adv, fork, anchor, w, kl=None, beta=0.0)
    assert parts["kl"].item() == 0.0
    with pytest.raises(ValueError, match="Unknown loss_type"):
        losses.reasonmaxxer_loss("grpo", logps, base, adv, fork, anchor, w)


# ----------------------------------------------------------------------------------------------- neg_prob_floor


def test_neg_prob_floor_stops_the_push_below_the_floor():
    floor = 0.1
    logps = leaf([[math.log(0.05), math.log(0.5), math.log(0.01)]])  # below, above, below
    fork = mask([True, True, True])
    out = losses.adv_ce_per_sequence(logps, torch.tensor([-2.0], dtype=torch.float64), fork, neg_prob_floor=floor)
    out.sum().backward()
    assert logps.grad[0, 0] == 0 and logps.grad[0, 2] == 0
    assert logps.grad[0, 1].item() == pytest.approx(2.0 / 3)  # still divided by all 3 forks
    assert out.item() == pytest.approx(2.0 * math.log(0.5) / 3)


def test_neg_prob_floor_bounds_the_loss_and_spares_positive_advantages():
    floor = 0.05
    fork = mask([True, True])
    adv = torch.tensor([-2.5], dtype=torch.float64)
    for logp in (-1.0, -3.0, -10.0, -1e4):
        value = losses.adv_ce_per_sequence(
            torch.tensor([[logp, logp]], dtype=torch.float64), adv, fork, neg_prob_floor=floor
        ).item()
        assert value >= 2.5 * math.log(floor) - 1e-12  # bounded below
    unbounded = losses.adv_ce_per_sequence(torch.tensor([[-1e4, -1e4]], dtype=torch.float64), adv, fork)
    assert unbounded.item() < -1e4  # the paper's loss is not
    positive = leaf([[math.log(0.01), math.log(0.01)]])
    out = losses.adv_ce_per_sequence(positive, torch.tensor([1.0], dtype=torch.float64), fork, neg_prob_floor=floor)
    out.sum().backward()
    assert torch.all(positive.grad < 0)  # a positive token below the floor is still pulled up


def test_the_loss_reports_how_much_of_the_negative_forks_the_floor_exempts():
    logps = torch.tensor([[math.log(0.5), math.log(0.01)], [math.log(0.01), math.log(0.01)]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # only row 0 is negative: 1 of its 2 forks is below
    fork, anchor, w = torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool), torch.ones(2)
    args = ("adv_ce", logps, logps, adv, fork, anchor, w.double())
    _, parts = losses.reasonmaxxer_loss(*args, beta=0.0, neg_prob_floor=0.05)
    assert parts["fork/neg_floored"].item() == pytest.approx(0.5)
    _, parts = losses.reasonmaxxer_loss(*args, beta=0.0)
    assert "fork/neg_floored" not in parts  # no floor, nothing to report


# ----------------------------------------------------------------------------------------------- adv_ratio


@pytest.mark.parametrize(
    "advantage,ratio,zero_grad",
    [
        (1.0, 1.5, True),
        (1.0, 1.1, False),
        (1.0, 0.5, False),
        (-1.0, 0.5, True),
        (-1.0, 0.9, False),
        (-1.0, 1.5, False),
    ],
)
def test_adv_ratio_zero_gradient_outside_clip_in_favoured_direction(advantage, ratio, zero_grad):
    eps = 0.2
    base = torch.tensor([[-1.0]], dtype=torch.float64)
    logps = leaf([[-1.0 + math.log(ratio)]])
    out = losses.adv_ratio_per_sequence(logps, base, torch.tensor([advantage], dtype=torch.float64), mask([True]), eps)
    out.sum().backward()
    grad = logps.grad.item()
    if zero_grad:
        assert grad == 0.0
        clipped = 1 + eps if advantage > 0 else 1 - eps
        assert out.item() == pytest.approx(-clipped * advantage)
    else:
        assert grad == pytest.approx(-advantage * ratio)  # d(-ratio·A)/dlogp
        # descending the loss moves log π with the advantage
        assert math.copysign(1, -grad) == math.copysign(1, advantage)


def test_adv_ratio_equals_minus_advantage_at_the_base_policy():
    base = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    out = losses.adv_ratio_per_sequence(
        base.clone(), base, torch.tensor([0.7], dtype=torch.float64), mask([True, True, False]), 0.2
    )
    assert out.item() == pytest.approx(-0.7)


# ----------------------------------------------------------------------------------------------- fork_dpo


def _dpo(delta_chosen: float, delta_rejected: float, beta: float = 1.0, n_chosen: int = 1) -> torch.Tensor:
    base = torch.full((2, 10), -2.0, dtype=torch.float64)
    logps = base.clone()
    fork = torch.zeros(2, 10, dtype=torch.bool)
    fork[0, :n_chosen] = True
    fork[1, 3] = True
    logps[0, :n_chosen] += delta_chosen
    logps[1, 3] += delta_rejected
    return losses.fork_dpo_per_pair(logps, base, fork, beta)


def test_fork_dpo_is_log2_at_zero_margin_and_vanishes_with_the_margin():
    assert _dpo(0.0, 0.0).item() == pytest.approx(math.log(2))
    assert _dpo(0.3, 0.3).item() == pytest.approx(math.log(2))
    values = [_dpo(m / 2, -m / 2).item() for m in (0.0, 1.0, 5.0, 20.0, 100.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 1e-40 and values[-1] >= 0.0
    for margin in (-100.0, -3.0, 0.0, 3.0, 100.0):
        assert _dpo(margin, 0.0).item() >= 0.0
    assert _dpo(1.0, 0.0, beta=2.0).item() == pytest.approx(-F.logsigmoid(torch.tensor(2.0)).item())


def test_fork_dpo_margin_is_a_mean_over_forks():
    assert _dpo(0.5, 0.0, n_chosen=10).item() == pytest.approx(_dpo(0.5, 0.0, n_chosen=1).item())


def test_fork_dpo_gradient_raises_chosen_and_lowers_rejected():
    base = torch.full((2, 3), -1.0, dtype=torch.float64)
    logps = base.clone().requires_grad_(True)
    fork = mask([True, False, True], [False, True, False])
    losses.fork_dpo_per_pair(logps, base, fork, 1.0).sum().backward()
    assert torch.all(logps.grad[0, [0, 2]] < 0) and logps.grad[1, 1] > 0
    assert logps.grad[0, 1] == 0 and logps.grad[1, 0] == 0 and logps.grad[1, 2] == 0


def test_fork_dpo_total_averages_pairs_and_weights_only_the_anchor():
    base = torch.full((4, 2), -1.0, dtype=torch.float64)
    logps = base.clone()
    logps[0, 0] += 1.0  # pair 0: margin 1
    fork = mask([True, False], [True, False], [True, False], [True, False])
    w = torch.tensor([0.1, 5.0, 1.0, 3.0], dtype=torch.float64)
    loss, parts = losses.reasonmaxxer_loss("fork_dpo", logps, base, torch.zeros(4), fork, ~fork, w, beta=0.0)
    expected = (-F.logsigmoid(torch.tensor(1.0)).item() + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected)
    # the anchor is per rollout: a cycled rollout (weight 1/k in each of its k pairs) is anchored once per epoch
    # (audit F9: the anchor used to get weight 1 per appearance)
    kl = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]], dtype=torch.float64)
    _, parts = losses.reasonmaxxer_loss("fork_dpo", logps, base, torch.zeros(4), fork, ~fork, w, kl=kl, beta=0.2)
    assert parts["kl"].item() == pytest.approx((0.1 * 1 + 5.0 * 2 + 1.0 * 3 + 3.0 * 4) / 4)


# ----------------------------------------------------------------------------------------------- token_kl


def test_token_kl_zero_for_identical_logits_and_nonnegative():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    assert torch.all(losses.token_kl(logits, logits.clone()) == 0)
    kl = losses.token_kl(torch.randn(3, 5, 11) * 3, torch.randn(3, 5, 11) * 3)
    assert kl.shape == (3, 5)
    assert torch.all(kl >= 0) and torch.all(kl > 0)


def test_token_kl_matches_torch_kl_div_direction_base_to_policy():
    torch.manual_seed(1)
    policy, ref = torch.randn(2, 7, 13, dtype=torch.float64), torch.randn(2, 7, 13, dtype=torch.float64)
    expected = F.kl_div(policy.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(losses.token_kl(policy, ref).double(), expected, atol=1e-5)
    reverse = F.kl_div(ref.log_softmax(-1), policy.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert not torch.allclose(
        losses.token_kl(policy, ref).double(), reverse, atol=1e-3
    )  # KL(base ‖ π), not KL(π ‖ base)


def test_token_kl_chunking_gives_the_same_answer():
    torch.manual_seed(2)
    policy, ref = torch.randn(2, 23, 9), torch.randn(2, 23, 9)
    full = losses.token_kl(policy, ref, chunk_size=1000)
    for chunk in (1, 4, 7, 23):
        assert torch.allclose(losses.token_kl(policy, ref, chunk_size=chunk), full, atol=1e-6)


def test_token_kl_is_fp32_and_differentiable_for_half_inputs():
    torch.manual_seed(3)
    policy = torch.randn(1, 4, 6).bfloat16().requires_grad_(True)
    ref = torch.randn(1, 4, 6).bfloat16()
    kl = losses.token_kl(policy, ref)
    assert kl.dtype == torch.float32
    kl.sum().backward()
    assert policy.grad is not None and torch.any(policy.grad != 0)


# ----------------------------------------------------------------------------------------------- chunked_logps_and_kl


def _heads_and_states(seed=4, rows=2, positions=7, hidden=5, vocab=11):
    """A trainable policy head with a bias, a different reference head, and policy/reference hidden states."""
    torch.manual_seed(seed)
    head, ref_head = torch.nn.Linear(hidden, vocab), torch.nn.Linear(hidden, vocab, bias=False)
    states = torch.randn(rows, positions, hidden, requires_grad=True)
    ref_states = torch.randn(rows, positions, hidden)
    targets = torch.randint(vocab, (rows, positions))
    return head, ref_head, states, ref_states, targets


def _grads(head, states, loss):
    head.zero_grad()
    states.grad = None
    loss.backward()
    return states.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()


# chunk sizes in tokens (2 rows): 1 position, 3 positions (does not divide 7), all positions, and more
@pytest.mark.parametrize("chunk_size", [1, 2, 6, 14, 1000])
def test_chunked_logps_and_kl_equal_full_logits_path_values_and_gradients(chunk_size):
    """Same log-probs, KL and gradients (w.r.t. hidden states and head) as full logits → selective_log_softmax
    + token_kl; the weights of the two terms differ, so a swapped or misaligned term would not cancel out."""
    from trl.trainer.utils import selective_log_softmax

    head, ref_head, states, ref_states, targets = _heads_and_states()
    w_logp, w_kl = torch.randn(2, 7), torch.randn(2, 7)
    full_logits = head(states)
    expected_logps = selective_log_softmax(full_logits, targets)
    expected_kl = losses.token_kl(full_logits, ref_head(ref_states).detach())
    expected_grads = _grads(head, states, (w_logp * expected_logps).sum() + (w_kl * expected_kl).sum())

    logps, kl = losses.chunked_logps_and_kl(states, head, targets, ref_states, ref_head, chunk_size=chunk_size)
    assert logps.shape == kl.shape == (2, 7)
    assert torch.allclose(logps, expected_logps, atol=1e-5)
    assert torch.allclose(kl, expected_kl, atol=1e-5) and torch.all(kl > 0)
    grads = _grads(head, states, (w_logp * logps).sum() + (w_kl * kl).sum())
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    assert ref_head.weight.grad is None  # the reference gets no gradient


def test_chunked_logps_without_reference_and_kl_zero_for_the_same_head():
    head, _, states, _, targets = _heads_and_states(seed=5)
    logps, kl = losses.chunked_logps_and_kl(states, head, targets, chunk_size=4)
    assert kl is None
    assert torch.allclose(logps, head(states).log_softmax(-1).gather(-1, targets[..., None])[..., 0], atol=1e-6)
    _, kl = losses.chunked_logps_and_kl(states, head, targets, states.detach(), chunk_size=4)  # ref_head = head
    assert torch.all(kl == 0)


def test_chunked_logps_and_kl_hold_one_chunk_of_logits_and_recompute_them_in_backward():
    """The head only ever sees chunk_size tokens, and backward calls it again per chunk: its logits are
    recomputed rather than kept alive from the forward pass (activation checkpointing)."""
    head, ref_head, states, ref_states, targets = _heads_and_states(seed=6, positions=10)
    calls = []
    head.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[:2]))
    logps, kl = losses.chunked_logps_and_kl(states, head, targets, ref_states, ref_head, chunk_size=8)
    assert calls == [(2, 4), (2, 4), (2, 2)]  # 8 tokens = 2 rows x 4 positions
    (logps.sum() + kl.sum()).backward()
    assert sorted(calls[3:]) == sorted(calls[:3])


def test_chunked_kl_is_fp32_for_half_hidden_states():
    head, ref_head, states, ref_states, targets = _heads_and_states(seed=7)
    head, ref_head = head.bfloat16(), ref_head.bfloat16()
    logps, kl = losses.chunked_logps_and_kl(states.bfloat16(), head, targets, ref_states.bfloat16(), ref_head)
    assert logps.dtype == kl.dtype == torch.float32
    expected = losses.token_kl(head(states.bfloat16()), ref_head(ref_states.bfloat16()))
    assert torch.allclose(kl, expected, atol=1e-5)


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = losses.masked_mean(values, mask([True, False, True], [False, False, False]))
    assert out.tolist() == [2.0, 0.0]


# ------------------------------------------------------------------------------- dropout (audit F8)


def dropout_trainer(tmp_path, **overrides):
    """A tiny Llama with attention dropout 0.5 and the default (zero) LoRA, on a hand-made pool."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import make_tiny_tokenizer

    from .helpers import make_pool, tiny_config

    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.5,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    pool = make_pool({0: [(1.0, [0.1, 2.0, 0.2, 0.1]), (0.0, [2.0, 0.1, 0.3])]}, prompt_len=4, vocab=39)
    args = tiny_config(tmp_path, fork_threshold=1.0, beta=0.2, **overrides)
    trainer = ReasonMaxxerTrainer(
        AutoModelForCausalLM.from_config(cfg), processing_class=tok, rollout_dataset=pool, args=args
    )
    return trainer, trainer.data_collator(trainer.prepare_training_data().to_list())


def test_dropout_is_off_by_default_so_the_anchor_starts_at_zero(tmp_path):
    """With the default config a zero LoRA is the base model exactly: KL 0 and a deterministic loss (the old
    default, GRPO's disable_dropout=False, gave KL 4.5e-4 then 3.8e-4 on the same batch)."""
    trainer, batch = dropout_trainer(tmp_path)
    trainer.model.train()
    with torch.no_grad():
        first = trainer.compute_loss(trainer.model, batch).item()
        second = trainer.compute_loss(trainer.model, batch).item()
    assert trainer._metrics["train"]["kl"] == [0.0, 0.0]
    assert first == second


def test_the_reference_forward_runs_in_eval_mode_even_with_dropout_on(tmp_path):
    trainer, batch = dropout_trainer(tmp_path, disable_dropout=False)
    modes = []
    base = trainer.model.get_base_model()
    handle = base.register_forward_pre_hook(
        lambda module, args: modes.append((torch.is_grad_enabled(), module.training))
    )
    trainer.model.train()
    try:
        trainer.compute_loss(trainer.model, batch)
    finally:
        handle.remove()
    assert modes == [(True, True), (False, False)]  # policy in train mode (dropout on), reference in eval mode
    assert base.training  # and the model is back in train mode
