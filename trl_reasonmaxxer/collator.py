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


def build_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """Pair every positive-advantage rollout with a negative one of the same prompt.

    ``rows`` need ``prompt_index``, ``prompt_ids`` and the ``ROLLOUT_FIELDS``. Within a prompt, both sides are
    shuffled (seeded) and the shorter side is cycled, so every rollout appears at least once; each side's ``weight``
    is ``1 / (times that rollout appears)``, so a weighted mean counts each rollout once, as the paper's unpaired
    loss does. Rows with advantage 0 carry no contrast and are dropped.
    """
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
        if not sides["chosen"] or not sides["rejected"]:
            continue
        for side in SIDES:
            rng.shuffle(sides[side])
        n = max(len(sides["chosen"]), len(sides["rejected"]))
        for i in range(n):
            pair = {"prompt_index": prompt_index, "prompt_ids": sides["chosen"][0]["prompt_ids"]}
            for side in SIDES:
                group = sides[side]
                row = group[i % len(group)]
                repeats = n // len(group) + (1 if i % len(group) < n % len(group) else 0)
                for key in ROLLOUT_FIELDS:
                    pair[f"{side}_{key}"] = row[key]
                pair[f"{side}_weight"] = 1.0 / repeats
            pairs.append(pair)
    return pairs


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
