"""Preference pairs at fork tokens: building them from a scored pool, and padding them into batches."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers.data.data_collator import DataCollatorMixin
from trl.trainer.utils import pad


SIDES = ("chosen", "rejected")
ROLLOUT_FIELDS = ("completion_ids", "fork_mask", "logps", "advantage")


def build_pairs(rows: list[dict], seed: int = 0, preference: bool = False) -> list[dict]:
    """Group scored rollouts into training items of two rollouts of the same prompt (a ``chosen`` and a ``rejected``
    side), so that every micro-batch holds ``2 × per_device_train_batch_size`` rollouts.

    ``rows`` need ``prompt_index``, ``prompt_ids`` and the ``ROLLOUT_FIELDS``. Rows with advantage 0 carry no
    signal and are dropped. Both signs are shuffled (seeded) within each prompt. Each side's ``weight`` is
    ``1 / (times that rollout appears)``.

    - ``preference=False`` (``adv_ce``, ``adv_ratio``: per-rollout losses): every rollout appears exactly once, as in
      the paper's unpaired loss. Within a prompt, positives are paired with negatives first, and the rollouts left
      over (all of the same sign) are paired with each other; the side with the higher advantage is ``chosen``. A
      prompt with an odd number of rollouts ends with one rollout paired with itself (weight 1/2 on each side).
      ``N`` rollouts give ``N / 2`` items (plus 1/2 per odd prompt), so an epoch is as many optimiser steps as the
      paper's: 80 rollouts at 8 per step are 10 steps. With the loss normalised by the number of rows (see
      ``losses.reasonmaxxer_loss``), every rollout then weighs ``1 / (2 · pairs per batch · grad accumulation)``
      per epoch, whatever its prompt's pass rate.
    - ``preference=True`` (``fork_dpo``): true preference pairs, (A > 0, A < 0), as many per prompt as its larger
      side: the shorter side is cycled so every rollout appears at least once. The pair is the unit of the DPO term
      (each pair counts once); the weights keep the KL anchor at once per rollout per epoch.
    """
    for row in rows:
        check_row_lengths(row)
    rng = random.Random(seed)
    by_prompt: dict[int, dict[str, list[dict]]] = defaultdict(lambda: {"chosen": [], "rejected": []})
    for row in rows:
        if row["advantage"] > 0:
            by_prompt[row["prompt_index"]]["chosen"].append(row)
        elif row["advantage"] < 0:
            by_prompt[row["prompt_index"]]["rejected"].append(row)
    pairs = []
    for prompt_index in sorted(by_prompt):
        sides = by_prompt[prompt_index]
        for side in SIDES:
            rng.shuffle(sides[side])
        if preference:
            pairs += _preference_pairs(prompt_index, sides["chosen"], sides["rejected"])
        else:
            pairs += _rollout_pairs(prompt_index, sides["chosen"], sides["rejected"])
    return pairs


def _pair(prompt_index: int, chosen: dict, rejected: dict, chosen_weight: float, rejected_weight: float) -> dict:
    pair = {"prompt_index": prompt_index, "prompt_ids": chosen["prompt_ids"]}
    for side, row, weight in (("chosen", chosen, chosen_weight), ("rejected", rejected, rejected_weight)):
        for key in ROLLOUT_FIELDS:
            pair[f"{side}_{key}"] = row[key]
        pair[f"{side}_weight"] = weight
    return pair


def _preference_pairs(prompt_index: int, positives: list[dict], negatives: list[dict]) -> list[dict]:
    """One (positive, negative) pair per rollout of the larger side, the shorter side cycled."""
    if not positives or not negatives:
        return []
    n = max(len(positives), len(negatives))

    def weight(group, i):  # 1 / (times the rollout at slot i appears over the n pairs)
        return 1.0 / (n // len(group) + (1 if i % len(group) < n % len(group) else 0))

    return [
        _pair(
            prompt_index,
            positives[i % len(positives)],
            negatives[i % len(negatives)],
            weight(positives, i),
            weight(negatives, i),
        )
        for i in range(n)
    ]


def _rollout_pairs(prompt_index: int, positives: list[dict], negatives: list[dict]) -> list[dict]:
    """Every rollout exactly once: (positive, negative) pairs, then the leftovers two by two."""
    k = min(len(positives), len(negatives))
    pairs = [_pair(prompt_index, positives[i], negatives[i], 1.0, 1.0) for i in range(k)]
    rest = positives[k:] + negatives[k:]
    for i in range(0, len(rest) - 1, 2):
        first, second = sorted(rest[i : i + 2], key=lambda r: -r["advantage"])
        pairs.append(_pair(prompt_index, first, second, 1.0, 1.0))
    if len(rest) % 2:
        pairs.append(_pair(prompt_index, rest[-1], rest[-1], 0.5, 0.5))
    return pairs


def check_row_lengths(row: dict) -> None:
    """Raise unless a scored rollout has one fork-mask entry and one base log-prob per completion token.

    A mismatch means the scores were computed on other ids (e.g. an empty prompt, where completion token 0 has no
    predicting position), and the collator would silently shift every mask by one token.
    """
    n = len(row["completion_ids"])
    lengths = {key: len(row[key]) for key in ("fork_mask", "logps") if row.get(key) is not None}
    if any(length != n for length in lengths.values()):
        raise ValueError(
            f"A rollout of prompt {row.get('prompt_index')} has {n} completion tokens but "
            + ", ".join(f"{length} {key} entries" for key, length in lengths.items())
            + ": its entropy/log-prob rows were not scored on these ids (an empty prompt, or a pool scored with "
            "another tokenizer). Every prompt needs at least one token; re-score the pool (drop its `entropy` and "
            "`logps` columns)."
        )


@dataclass
class DataCollatorForForkPairs(DataCollatorMixin):
    """Pads fork pairs into one batch: the chosen rollouts first, then their rejected partners.

    Like TRL's ``DataCollatorForPreference``, every mask lives on the token axis of ``input_ids`` (position ``i`` is
    about token ``i``); the trainer shifts them by one to reach the logits that predict those tokens.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` (completion tokens, EOS included), ``fork_mask``
    (gated completion tokens), ``base_logps`` (the base model's log-prob of each completion token, 0 elsewhere),
    ``advantages`` and ``weights``, each of batch size ``2 × pairs``.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, attention, completion, forks, logps, advantages, weights = [], [], [], [], [], [], []
        for side in SIDES:
            for ex in examples:
                prompt, comp = list(ex["prompt_ids"]), list(ex[f"{side}_completion_ids"])
                zeros = [0] * len(prompt)
                ids.append(torch.tensor(prompt + comp))
                attention.append(torch.ones(len(prompt) + len(comp), dtype=torch.long))
                completion.append(torch.tensor(zeros + [1] * len(comp)))
                forks.append(torch.tensor(zeros + [int(f) for f in ex[f"{side}_fork_mask"]]))
                logps.append(torch.tensor([0.0] * len(prompt) + list(ex[f"{side}_logps"]), dtype=torch.float32))
                advantages.append(float(ex[f"{side}_advantage"]))
                weights.append(float(ex[f"{side}_weight"]))
        kw = {"pad_to_multiple_of": self.pad_to_multiple_of}
        return {
            "input_ids": pad(ids, padding_value=self.pad_token_id, **kw),
            "attention_mask": pad(attention, padding_value=0, **kw),
            "completion_mask": pad(completion, padding_value=0, **kw),
            "fork_mask": pad(forks, padding_value=0, **kw).bool(),
            "base_logps": pad(logps, padding_value=0.0, **kw),
            "advantages": torch.tensor(advantages, dtype=torch.float32),
            "weights": torch.tensor(weights, dtype=torch.float32),
        }
