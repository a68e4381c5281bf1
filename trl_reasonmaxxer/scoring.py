"""Teacher-forced scoring of rollouts by the frozen base model: per-token entropy and sampled-token log-prob.

Uses TRL's fused LM head, which projects hidden states through the head in tiles, so a sequence's full fp32
``[T, V]`` logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from trl.trainer.utils import add_fused_lm_head

_FUSED_ATTR = "_reasonmaxxer_fused_head"


def ensure_fused_head(model) -> None:
    """Patch the (base) model once with a fused head returning log-probs and entropy; generation is unaffected."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, _FUSED_ATTR, False):
        add_fused_lm_head(base, outputs=("log_probs", "entropy"))
        setattr(base, _FUSED_ATTR, True)


@torch.no_grad()
def score_rollouts(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    batch_size: int = 4,
    desc: str = "Scoring",
    disable_progress: bool = False,
) -> list[tuple[list[float], list[float]]]:
    """Entropy (nats) and log-prob of every completion token under ``model``, given ``(prompt_ids, completion_ids)``.

    Entry ``j`` of both lists describes the distribution that predicted completion token ``j`` (the logits at input
    position ``len(prompt) + j - 1``). Pass a PEFT model inside ``disable_adapter()`` to score the base model.
    """
    ensure_fused_head(model)
    device = next(model.parameters()).device
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
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                labels=labels.to(device),
                fused_lm_head=True,
            )
            entropy, logps = out.entropy.float().cpu(), out.log_probs.float().cpu()
            for row, i in enumerate(batch):
                p, c = len(sequences[i][0]), len(sequences[i][1])
                results[i] = (entropy[row, p - 1 : p - 1 + c].tolist(), logps[row, p - 1 : p - 1 + c].tolist())
    finally:
        model.train(was_training)
    return results
