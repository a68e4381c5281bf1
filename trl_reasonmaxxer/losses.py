"""ReasonMaxxer losses: pure tensor functions, no model.

Shapes use the *prediction* axis: index ``t`` of a ``[B, T-1]`` tensor is the distribution produced at input position
``t``, which predicts (and scores) input token ``t + 1``. Masks are boolean on the same axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` per sequence (``[B, T] → [B]``); 0 for a sequence with no position."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Per-position ``KL(π_ref ‖ π) = Σ_v p_ref(v)·(log p_ref(v) − log π(v))`` over the full vocabulary, in fp32.

    Computed in chunks along the sequence so only one chunk's fp32 log-softmaxes exist at a time.
    """
    out = []
    for start in range(0, policy_logits.shape[1], chunk_size):
        logp = F.log_softmax(policy_logits[:, start : start + chunk_size].float(), dim=-1)
        logq = F.log_softmax(ref_logits[:, start : start + chunk_size].float(), dim=-1)
        out.append(_kl_from_logprobs(logq, logp))
    return torch.cat(out, dim=1)


def _kl_from_logprobs(logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``Σ_v q(v)·(log q(v) − log p(v))`` over the last axis; einsum contracts the vocabulary without keeping the
    ``[.., V]`` product for backward."""
    return torch.einsum("...v,...v->...", logq.exp(), logq - logp)


def chunked_logps_and_kl(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
    ref_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Policy log-prob of each target and, given reference hidden states, the per-position full-vocabulary
    ``KL(π_ref ‖ π)`` of :func:`token_kl`, without ever holding ``[B, T, V]`` logits.

    ``hidden``/``ref_hidden`` ``[B, T, H]`` are final (normed) hidden states at prediction positions, ``targets``
    ``[B, T]`` the tokens they predict; ``head``/``ref_head`` (default: ``head``) map them to logits. Positions go
    in chunks of about ``chunk_size`` tokens (batch rows × positions), each under non-reentrant activation
    checkpointing: backward recomputes a chunk's logits instead of keeping them, so one chunk's full-vocabulary
    tensors exist at a time, forward or backward. Log-softmaxes are fp32. Returns ``(logps, kl)``, ``kl`` None
    without ``ref_hidden``.
    """
    positions = max(1, chunk_size // max(hidden.shape[0], 1))
    ref_head = head if ref_head is None else ref_head
    logps, kls = [], []
    for start in range(0, hidden.shape[1], positions):
        part = slice(start, start + positions)
        ref = None if ref_hidden is None else ref_hidden[:, part]
        logp, kl = checkpoint(
            _logps_and_kl, hidden[:, part], head, targets[:, part], ref, ref_head, use_reentrant=False
        )
        logps.append(logp)
        kls.append(kl)
    return torch.cat(logps, dim=1), None if ref_hidden is None else torch.cat(kls, dim=1)


def _logps_and_kl(hidden, head, targets, ref_hidden, ref_head):
    logp = F.log_softmax(head(hidden).float(), dim=-1)
    logps = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if ref_hidden is None:
        return logps, None
    with torch.no_grad():
        logq = F.log_softmax(ref_head(ref_hidden).float(), dim=-1)
    return logps, _kl_from_logprobs(logq, logp)


def adv_ce_per_sequence(
    logps: torch.Tensor, advantages: torch.Tensor, fork_mask: torch.Tensor, neg_prob_floor: float | None = None
) -> torch.Tensor:
    """The paper's decision term per sequence: mean over its fork tokens of ``−A·log π(token)``.

    With ``neg_prob_floor``, a fork token of a negative-advantage sequence whose probability already fell below the
    floor contributes nothing, which bounds the otherwise unbounded push-down. The mean still divides by the number
    of fork tokens, so the floor never inflates the weight of the remaining ones.
    """
    active = fork_mask
    if neg_prob_floor is not None:
        active = fork_mask & ~below_floor(logps, advantages, neg_prob_floor)
    per_token = -advantages[:, None] * logps * active.to(logps.dtype)
    return per_token.sum(-1) / fork_mask.sum(-1).clamp(min=1).to(logps.dtype)


def below_floor(logps: torch.Tensor, advantages: torch.Tensor, neg_prob_floor: float) -> torch.Tensor:
    """Positions of negative-advantage sequences whose token probability is below ``neg_prob_floor``: where
    ``adv_ce`` stops pushing down."""
    return (advantages[:, None] < 0) & (logps.detach() < math.log(neg_prob_floor))


def adv_ratio_per_sequence(
    logps: torch.Tensor, base_logps: torch.Tensor, advantages: torch.Tensor, fork_mask: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Clipped decision term: PPO's clipped surrogate at fork tokens with the base model as the old policy.

    Once ``π/π_base`` leaves ``[1 − ε, 1 + ε]`` in the direction the advantage favours, the token's gradient is zero.
    Like PPO without a dual clip it is bounded only on that side: a token moving against its advantage (``A < 0``
    and a growing ratio) has loss and gradient ``|A| · π/π_base``, which grows as ``exp(log π − log π_base)``.
    """
    ratio = torch.exp(logps - base_logps)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - epsilon, 1 + epsilon) * adv)
    return masked_mean(-surrogate, fork_mask)


def fork_dpo_per_pair(
    logps: torch.Tensor, base_logps: torch.Tensor, fork_mask: torch.Tensor, dpo_beta: float
) -> torch.Tensor:
    """Pairwise bounded loss ``−log σ(β · (Δ_chosen − Δ_rejected))`` per pair.

    Rows ``[0, P)`` are the chosen rollouts and ``[P, 2P)`` their rejected partners; Δ is a rollout's mean fork-token
    log-ratio ``log π − log π_base``, a mean so that a rollout with more forks does not dominate the margin.
    """
    delta = masked_mean(logps - base_logps, fork_mask)
    chosen, rejected = delta.chunk(2)
    return -F.logsigmoid(dpo_beta * (chosen - rejected))


def reasonmaxxer_loss(
    loss_type: str,
    logps: torch.Tensor,
    base_logps: torch.Tensor,
    advantages: torch.Tensor,
    fork_mask: torch.Tensor,
    anchor_mask: torch.Tensor,
    weights: torch.Tensor,
    kl: torch.Tensor | None = None,
    beta: float = 0.2,
    epsilon: float = 0.2,
    dpo_beta: float = 1.0,
    neg_prob_floor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts for one batch of ``2P`` rollouts (``P`` items of :func:`collator.build_pairs`:
    the chosen rows first, then their partners).

    Each term is averaged over its own mask within a sequence; sequences are then weighted by ``weights`` (``1 /
    times the rollout appears in the epoch's items``) and divided by the number of rows ``2P``, a constant, not by
    the weight sum: a rollout weighs the same ``1 / 2P`` in every batch, so with the trainer's division by gradient
    accumulation it counts exactly once per epoch at ``1 / (2P · GA)``, the paper's per-rollout weight (one rollout
    per batch, ``L_i / GA``), whatever its prompt's pass rate. The ``fork_dpo`` term is one value per pair, each pair
    counting once (a mean over the ``P`` pairs); its KL anchor is per rollout, weighted like the others. ``kl`` may
    be None when ``beta == 0``. With ``adv_ce`` and ``neg_prob_floor`` the parts also hold ``fork/neg_floored``, the
    share of the batch's negative-rollout fork tokens the floor exempts (does the floor act at all?).
    """
    if loss_type == "adv_ce":
        decision = adv_ce_per_sequence(logps, advantages, fork_mask, neg_prob_floor)
    elif loss_type == "adv_ratio":
        decision = adv_ratio_per_sequence(logps, base_logps, advantages, fork_mask, epsilon)
    elif loss_type == "fork_dpo":
        decision = fork_dpo_per_pair(logps, base_logps, fork_mask, dpo_beta)
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose adv_ce, adv_ratio or fork_dpo.")
    rows = weights.numel()
    if loss_type == "fork_dpo":
        decision_loss = decision.mean()
    else:
        decision_loss = (weights * decision).sum() / rows
    anchor = masked_mean(kl, anchor_mask) if kl is not None else torch.zeros_like(weights)
    anchor_loss = (weights * anchor).sum() / rows
    loss = decision_loss + beta * anchor_loss
    parts = {"decision_loss": decision_loss.detach(), "kl": anchor_loss.detach()}
    if loss_type == "adv_ce" and neg_prob_floor is not None:
        # does the floor act? the share of negative rollouts' fork tokens it currently exempts
        negative = fork_mask & (advantages[:, None] < 0)
        floored = below_floor(logps, advantages, neg_prob_floor) & negative
        parts["fork/neg_floored"] = floored.sum() / negative.sum().clamp(min=1)
    return loss, parts
