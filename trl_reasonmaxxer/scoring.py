"""Teacher-forced scoring of rollouts by the frozen base model: per-token entropy and sampled-token log-prob.

The model's forward returns its final hidden states and projects only the last position through the LM head
(``logits_to_keep=1``); completion positions then go through the head in chunks of tokens, so a sequence's
``[T, V]`` logits never exist: memory grows with the hidden size per token, not the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from tqdm.auto import tqdm
from trl.trainer.utils import selective_log_softmax_and_entropy


# Tokens whose full-vocabulary fp32 logits exist at once (≈ 37 MiB each with Qwen2.5's 151,936-token vocabulary)
SCORING_CHUNK_TOKENS = 64


def base_lm_head(head: torch.nn.Module) -> torch.nn.Module:
    """``head`` without any PEFT adapter (a LoRA on ``lm_head``, ``modules_to_save``): the base model's head."""
    while True:
        if isinstance(head, BaseTunerLayer):
            head = head.get_base_layer()
        elif isinstance(head, AuxiliaryTrainingWrapper):
            head = head.original_module
        else:
            return head


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """``(hidden, last_logits)``: the final (normed) hidden states ``[B, T, H]`` from the top-level forward (so a
    DDP wrapper's hooks run), and the model's own logits at the last position ``[B, 1, V]``, the only ones it
    computes (``logits_to_keep=1``)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return out.hidden_states[-1], out.logits


def check_lm_head(head, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise unless ``head(hidden)`` gives the model's own ``logits``: the chunked paths compute logits that way, so
    a model that transforms them after its head (logit soft-capping, scaling) would be scored and trained wrong."""
    with torch.no_grad():
        ours, theirs = head(hidden).float(), logits.float()
    if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"This model's logits are not its output embeddings applied to its final hidden states (largest "
            f"difference {(ours - theirs).abs().max().item():.3g}): it transforms them after the LM head, e.g. with "
            "logit soft-capping or scaling. ReasonMaxxer projects hidden states through get_output_embeddings() in "
            "chunks to avoid full-vocabulary logits, so it does not support such a model; use another base model."
        )


@torch.no_grad()
def score_rollouts(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    batch_size: int = 4,
    desc: str = "Scoring",
    disable_progress: bool = False,
    chunk_size: int = SCORING_CHUNK_TOKENS,
) -> list[tuple[list[float], list[float]]]:
    """Entropy (nats) and log-prob of every completion token under ``model``, given ``(prompt_ids, completion_ids)``.

    Entry ``j`` of both lists describes the distribution that predicted completion token ``j`` (the logits at input
    position ``len(prompt) + j - 1``), in fp32. Pass a PEFT model inside ``disable_adapter()`` to score the base
    model. ``chunk_size`` completion tokens go through the LM head at a time. Every prompt needs at least one token:
    with none, completion token 0 has no predicting position and every entry would describe the next token.
    """
    for i, (prompt, _) in enumerate(sequences):
        if len(prompt) == 0:
            raise ValueError(
                f"Sequence {i} has an empty prompt: its first completion token has no position that predicts it, so "
                "its entropy and log-prob cannot be scored, and the fork mask and base log-probs of the rest would be "
                "shifted by one token. Give every prompt at least one token (some text, or a tokenizer that adds a "
                "BOS token)."
            )
    device = next(model.parameters()).device
    head = base_lm_head(model.get_output_embeddings())
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    results: list[tuple[list[float], list[float]] | None] = [None] * len(sequences)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=disable_progress):
            batch = order[start : start + batch_size]
            width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                prompt, completion = list(sequences[i][0]), list(sequences[i][1])
                n = len(prompt) + len(completion)
                input_ids[row, :n] = torch.tensor(prompt + completion)
                labels[row, len(prompt) : n] = torch.tensor(completion, dtype=torch.long)
                attention[row, :n] = 1
            hidden, last_logits = final_hidden_states(model, input_ids.to(device), attention.to(device))
            if start == 0:
                check_lm_head(head, hidden[:, -1:], last_logits)
            # position t predicts token t + 1; completion positions in row order, so each row's are contiguous
            targets = labels[:, 1:].to(device)
            mask = targets != -100
            counts = mask.sum(1).tolist()
            logps, entropy = _head_scores(head, hidden[:, :-1][mask], targets[mask], chunk_size)
            logps, entropy = logps.cpu().split(counts), entropy.cpu().split(counts)
            for row, i in enumerate(batch):
                results[i] = (entropy[row].tolist(), logps[row].tolist())
    finally:
        model.train(was_training)
    return results


def _head_scores(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int):
    """Flat ``(logps, entropy)`` of ``targets`` under ``head(hidden)``, ``chunk_size`` rows of logits at a time."""
    if len(targets) == 0:  # a batch of empty completions
        return hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32)
    scored = [
        selective_log_softmax_and_entropy(head(h).float(), t, entropy_requires_grad=False)
        for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size))
    ]
    return torch.cat([s[0] for s in scored]), torch.cat([s[1] for s in scored])
