"""Preference pairs and padding (``trl_reasonmaxxer.collator``)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch

from trl_reasonmaxxer import DataCollatorForForkPairs, build_pairs


PAD = 0
EOS = 99


def rollout(prompt_index: int, uid: int, advantage: float, length: int = 3) -> dict:
    """A scored rollout whose completion ids start with a unique id, so it can be recognised in a pair."""
    completion = [uid] + [uid + 1000 + j for j in range(length - 2)] + [EOS]
    return {
        "prompt_index": prompt_index,
        "prompt_ids": [10 + prompt_index, 20 + prompt_index],
        "completion_ids": completion,
        "fork_mask": [j == 1 for j in range(length)],
        "logps": [-(uid + j / 10) for j in range(length)],
        "advantage": advantage,
    }


def pool_rows() -> list[dict]:
    rows, uid = [], 1
    layout = {
        0: [1.7, -0.6, -0.6, -0.6],  # 1 positive, 3 negatives
        1: [1.0, 1.0, -1.0, -1.0],  # balanced
        2: [0.6, 0.6, 0.6, -1.7, 0.0],  # 3 positives, 1 negative, one A = 0
        3: [1.0, 0.0],  # no negative: no pair
        4: [0.0, 0.0, 0.0],  # uniform group
    }
    for p, advs in layout.items():
        for a in advs:
            rows.append(rollout(p, uid, a, length=3 + uid % 3))
            uid += 1
    return rows


def test_build_pairs_same_prompt_signs_and_coverage():
    rows = pool_rows()
    pairs = build_pairs(rows, seed=0)
    by_uid = {r["completion_ids"][0]: r for r in rows}
    counts = Counter()
    weight_sum = defaultdict(float)
    for pair in pairs:
        chosen, rejected = by_uid[pair["chosen_completion_ids"][0]], by_uid[pair["rejected_completion_ids"][0]]
        assert chosen["prompt_index"] == rejected["prompt_index"] == pair["prompt_index"]
        assert pair["prompt_ids"] == chosen["prompt_ids"]
        assert pair["chosen_advantage"] > 0 > pair["rejected_advantage"]
        for side, row in (("chosen", chosen), ("rejected", rejected)):
            uid = row["completion_ids"][0]
            counts[uid] += 1
            weight_sum[uid] += pair[f"{side}_weight"]
            assert pair[f"{side}_fork_mask"] == row["fork_mask"]
            assert pair[f"{side}_logps"] == row["logps"]
            assert pair[f"{side}_advantage"] == row["advantage"]
    nonzero = {r["completion_ids"][0] for r in rows if r["advantage"] != 0 and r["prompt_index"] in (0, 1, 2)}
    assert set(counts) == nonzero  # every signed rollout of a pairable prompt appears; A = 0 never does
    for uid in nonzero:
        assert weight_sum[uid] == pytest.approx(1.0)
    # one pair per rollout of the larger side
    assert Counter(p["prompt_index"] for p in pairs) == {0: 3, 1: 2, 2: 3}


def test_build_pairs_weights_with_uneven_cycling():
    rows = [rollout(0, uid, 1.0) for uid in (1, 2)] + [rollout(0, uid, -1.0) for uid in range(3, 8)]  # 2 vs 5
    pairs = build_pairs(rows, seed=3)
    assert len(pairs) == 5
    weights = defaultdict(list)
    for pair in pairs:
        weights[pair["chosen_completion_ids"][0]].append(pair["chosen_weight"])
    assert sorted(len(w) for w in weights.values()) == [2, 3]
    for ws in weights.values():
        assert ws == [pytest.approx(1 / len(ws))] * len(ws)


def test_build_pairs_is_seeded():
    rows = pool_rows()
    key = lambda ps: [(p["chosen_completion_ids"][0], p["rejected_completion_ids"][0]) for p in ps]  # noqa: E731
    assert key(build_pairs(rows, seed=5)) == key(build_pairs(rows, seed=5))
    assert len({tuple(key(build_pairs(rows, seed=s))) for s in range(6)}) > 1
    assert build_pairs([rollout(0, 1, 1.0), rollout(0, 2, 0.0)]) == []


def test_collator_padding_and_masks():
    rows = pool_rows()
    pairs = build_pairs(rows, seed=0)
    examples = [pairs[0], pairs[4]]
    batch = DataCollatorForForkPairs(pad_token_id=PAD)(examples)
    n = len(examples)
    assert batch["input_ids"].shape[0] == 2 * n
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "completion_mask",
        "fork_mask",
        "base_logps",
        "advantages",
        "weights",
    }
    order = [(ex, side) for side in ("chosen", "rejected") for ex in examples]  # chosen rows first
    width = batch["input_ids"].shape[1]
    assert width == max(len(ex["prompt_ids"]) + len(ex[f"{s}_completion_ids"]) for ex, s in order)
    for b, (ex, side) in enumerate(order):
        prompt, completion = ex["prompt_ids"], ex[f"{side}_completion_ids"]
        P, C = len(prompt), len(completion)
        ids = batch["input_ids"][b]
        assert ids[: P + C].tolist() == prompt + completion
        assert torch.all(ids[P + C :] == PAD)
        assert batch["attention_mask"][b].tolist() == [1] * (P + C) + [0] * (width - P - C)
        # completion tokens, EOS included
        assert batch["completion_mask"][b].tolist() == [0] * P + [1] * C + [0] * (width - P - C)
        assert ids[P + C - 1] == EOS and batch["completion_mask"][b, P + C - 1] == 1
        # forks sit on completion tokens only, at the token they gate
        fork = batch["fork_mask"][b]
        assert fork.dtype == torch.bool
        assert fork.tolist() == [False] * P + ex[f"{side}_fork_mask"] + [False] * (width - P - C)
        assert not torch.any(fork & ~batch["completion_mask"][b].bool())
        # base log-prob j belongs to completion token j, i.e. input position P + j
        logps = batch["base_logps"][b]
        assert logps[P : P + C].tolist() == pytest.approx(ex[f"{side}_logps"])
        assert torch.all(logps[:P] == 0) and torch.all(logps[P + C :] == 0)
        assert batch["advantages"][b].item() == pytest.approx(ex[f"{side}_advantage"])
        assert batch["weights"][b].item() == pytest.approx(ex[f"{side}_weight"])
    assert torch.all(batch["advantages"][:n] > 0) and torch.all(batch["advantages"][n:] < 0)


def test_collator_pad_to_multiple_of():
    pairs = build_pairs(pool_rows(), seed=0)
    batch = DataCollatorForForkPairs(pad_token_id=7, pad_to_multiple_of=8)(pairs[:2])
    assert batch["input_ids"].shape[1] % 8 == 0
    for key in ("attention_mask", "completion_mask", "fork_mask", "base_logps"):
        assert batch[key].shape == batch["input_ids"].shape
    lengths = batch["attention_mask"].sum(1)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(batch["input_ids"][b, n:] == 7)
