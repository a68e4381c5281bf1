"""Greedy decoding of the base model with a teacher looking over its shoulder, and token interventions.

Each step runs one base forward and one teacher forward on the new token only (each model keeps its own KV cache),
so both see the identical prefix. A *policy* then decides, per row, whether the base model's greedy token is
replaced: never (the base model's own decode, which also gives the divergence statistics), by the teacher's token
wherever the two disagree (oracle), by the teacher's token wherever the base entropy exceeds τ (entropy-gated), or by
a random alternative from the base top-20 wherever the two disagree (random control). Generation continues from the
corrected prefix.

Prompts are decoded in left-padded batches, as ``generate`` does; a row stops at its first EOS (kept) and is then
fed padding until the whole batch is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from trl.trainer.utils import entropy_from_logits, use_adapter

from .divergence import token_rank


BASE, ORACLE, ENTROPY, RANDOM = "base", "oracle", "entropy", "random"
POLICIES = (BASE, ORACLE, ENTROPY, RANDOM)


class AdapterDisabled:
    """A PeftModel called with its adapters off: the base model, without loading it a second time."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **kwargs):
        with use_adapter(self.model, None):
            return self.model(**kwargs)


@dataclass
class Step:
    """What a policy sees at one decoding step, one row per sequence (``[B, V]`` / ``[B]``)."""

    base_logits: torch.Tensor
    base_token: torch.Tensor
    teacher_token: torch.Tensor
    entropy: torch.Tensor


# A policy returns (gated [B] bool: positions it intervenes at, the token to use there [B]).
Policy = Callable[[Step], tuple[torch.Tensor, torch.Tensor]]


def make_policy(name: str, tau: float = 1.2, random_top: int = 20, seed: int = 0) -> Policy:
    """The policy called ``name`` (see :data:`POLICIES`).

    ``entropy`` gates every position with base entropy strictly above ``tau`` and inserts the teacher's token there
    (which may equal the base model's). ``random`` gates the oracle's positions and inserts a token drawn uniformly
    from the base model's ranks 2..``random_top`` (an alternative, never the base model's own token).
    """
    if name == BASE:
        return lambda s: (torch.zeros_like(s.base_token, dtype=torch.bool), s.base_token)
    if name == ORACLE:
        return lambda s: (s.teacher_token != s.base_token, s.teacher_token)
    if name == ENTROPY:
        return lambda s: (s.entropy > tau, s.teacher_token)
    if name == RANDOM:
        generator = torch.Generator().manual_seed(seed)

        def random_alternative(s: Step):
            k = min(random_top, s.base_logits.shape[-1])
            if k < 2:
                raise ValueError(f"The random control needs random_top >= 2 and a vocabulary of 2+, got top {k}.")
            top = s.base_logits.topk(k, dim=-1).indices
            pick = torch.randint(1, k, (top.shape[0], 1), generator=generator).to(top.device)
            return s.teacher_token != s.base_token, top.gather(-1, pick)[:, 0]

        return random_alternative
    raise ValueError(f"Unknown intervention policy {name!r}; choose one of: {', '.join(POLICIES)}.")


def _device(model) -> torch.device:
    module = model.model if isinstance(model, AdapterDisabled) else model
    return next(module.parameters()).device


def _forward(model, input_ids, attention_mask, position_ids, cache):
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits[:, -1].float(), out.past_key_values


@torch.no_grad()
def guided_greedy(
    base,
    teacher,
    prompt_ids: Sequence[Sequence[int]],
    policy: Policy,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str = "Decoding",
    disable_progress: bool = False,
) -> list[dict]:
    """Greedy decoding of ``base`` in which ``policy`` may replace the base token at each step; ``teacher`` is run
    on the same prefix at every step. Pass a PeftModel as ``teacher`` and ``AdapterDisabled(it)`` as ``base``.

    Returns one dict per prompt: ``completion_ids`` (EOS kept) and ``truncated`` (no EOS within
    ``max_new_tokens``), the GRPO rollout format, plus per completion token: ``entropy`` (base, nats),
    ``teacher_rank`` (rank of the teacher's greedy token under the base, 1 = they agree), ``gated`` (the policy
    intervened) and ``changed`` (the token differs from the base model's greedy token).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("Every prompt needs at least one token; an empty prompt has no next-token distribution.")
    device = _device(teacher)
    results: list[dict] = []
    batches = range(0, len(prompt_ids), batch_size)
    bar = tqdm(total=len(batches) * max_new_tokens, desc=desc, unit="step", disable=disable_progress)
    try:
        for start in batches:
            batch = [list(p) for p in prompt_ids[start : start + batch_size]]
            results.extend(_decode_batch(base, teacher, batch, policy, eos_ids, pad_id, max_new_tokens, device, bar))
    finally:
        bar.close()
    return results


def _decode_batch(base, teacher, prompts, policy, eos_ids, pad_id, max_new_tokens, device, bar) -> list[dict]:
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # positions count real tokens only, so a left-padded row sees the same positions as it would alone
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    eos = torch.tensor(sorted(eos_ids), device=device)
    rows = [{"completion_ids": [], "entropy": [], "teacher_rank": [], "gated": [], "changed": []} for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    base_cache = teacher_cache = None
    for step in range(max_new_tokens):
        base_logits, base_cache = _forward(base, input_ids, attention, positions, base_cache)
        teacher_logits, teacher_cache = _forward(teacher, input_ids, attention, positions, teacher_cache)
        if teacher_logits.shape[-1] != base_logits.shape[-1]:
            raise ValueError(
                f"The teacher scores {teacher_logits.shape[-1]} tokens but the base {base_logits.shape[-1]}: both "
                "models must share one tokenizer (vocabulary)."
            )
        s = Step(base_logits, base_logits.argmax(-1), teacher_logits.argmax(-1), entropy_from_logits(base_logits))
        gated, proposal = policy(s)
        token = torch.where(gated, proposal, s.base_token)
        ranks = token_rank(base_logits, s.teacher_token)
        for i, row in enumerate(rows):
            if not done[i]:
                row["completion_ids"].append(int(token[i]))
                row["entropy"].append(float(s.entropy[i]))
                row["teacher_rank"].append(int(ranks[i]))
                row["gated"].append(bool(gated[i]))
                row["changed"].append(bool(token[i] != s.base_token[i]))
        done |= torch.isin(token, eos)
        bar.update(1)
        if bool(done.all()):
            bar.update(max_new_tokens - step - 1)
            break
        # finished rows are fed padding (attended, as in ``generate``); their outputs are no longer recorded
        input_ids = torch.where(done, pad_id, token)[:, None]
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=-1)
        positions = positions[:, -1:] + 1
    for row in rows:
        row["truncated"] = row["completion_ids"][-1] not in eos_ids
    return rows
