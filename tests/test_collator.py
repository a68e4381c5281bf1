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


def test_preference_pairs_same_prompt_signs_and_coverage():
    rows = pool_rows()
    pairs = build_pairs(rows, seed=0, preference=True)
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


def test_preference_pairs_weights_with_uneven_cycling():
    rows = [rollout(0, uid, 1.0) for uid in (1, 2)] + [rollout(0, uid, -1.0) for uid in range(3, 8)]  # 2 vs 5
    pairs = build_pairs(rows, seed=3, preference=True)
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
    for preference in (False, True):
        assert key(build_pairs(rows, 5, preference)) == key(build_pairs(rows, 5, preference))
        assert len({tuple(key(build_pairs(rows, s, preference))) for s in range(6)}) > 1
    assert build_pairs([rollout(0, 1, 1.0), rollout(0, 2, 0.0)], preference=True) == []


def test_collator_padding_and_masks():
    rows = pool_rows()
    pairs = build_pairs(rows, seed=0, preference=True)
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


# ------------------------------------------------------------------------- each rollout counts once (audit F1)

SPLITS = {0: (10, 10), 1: (14, 6), 2: (17, 3), 3: (19, 1)}  # prompt: (correct, wrong) of 20 rollouts


def paper_pool(splits=SPLITS) -> list[dict]:
    """One single-token rollout per (prompt, sample) with the paper's advantages; the completion id names it."""
    from trl_reasonmaxxer.selection import group_advantages

    rows = []
    for p, (c, r) in splits.items():
        for k, a in enumerate(group_advantages([p] * (c + r), [1.0] * c + [0.0] * r)):
            rows.append(
                dict(
                    prompt_index=p,
                    prompt_ids=[1],
                    completion_ids=[100 * p + k],
                    fork_mask=[True],
                    logps=[0.0],
                    advantage=a,
                )
            )
    return rows


def test_rollout_items_cover_every_rollout_exactly_once_with_the_larger_advantage_chosen():
    rows = pool_rows() + [rollout(5, 900 + k, a) for k, a in enumerate([1.0, 1.0, 1.0, -1.0, -1.0])]  # odd: 5
    pairs = build_pairs(rows, seed=0)
    weight, count = defaultdict(float), Counter()
    for pair in pairs:
        assert pair["chosen_advantage"] >= pair["rejected_advantage"]
        for side in ("chosen", "rejected"):
            uid = pair[f"{side}_completion_ids"][0]
            weight[uid] += pair[f"{side}_weight"]
            count[uid] += 1
    signed = {r["completion_ids"][0] for r in rows if r["advantage"] != 0}
    assert set(weight) == signed  # prompt 3 (positives only) too: the paper's loss needs no partner
    assert all(w == pytest.approx(1.0) for w in weight.values())
    # a rollout appears once, except the last one of an odd prompt, paired with itself at 1/2 + 1/2
    self_pairs = [p for p in pairs if p["chosen_completion_ids"] == p["rejected_completion_ids"]]
    assert [p["chosen_weight"] for p in self_pairs] == [0.5] * len(self_pairs)
    assert {uid for uid, n in count.items() if n == 2} == {p["chosen_completion_ids"][0] for p in self_pairs}
    odd = [
        p
        for p in {r["prompt_index"] for r in rows}
        if sum(r["advantage"] != 0 and r["prompt_index"] == p for r in rows) % 2
    ]
    assert sorted(p["prompt_index"] for p in self_pairs) == sorted(odd)
    # within a prompt, (positive, negative) pairs come first: min(#pos, #neg) of them
    for p in (0, 1, 2, 5):
        mixed = [x for x in pairs if x["prompt_index"] == p and x["chosen_advantage"] > 0 > x["rejected_advantage"]]
        signs = [r["advantage"] for r in rows if r["prompt_index"] == p and r["advantage"] != 0]
        assert len(mixed) == min(sum(a > 0 for a in signs), sum(a < 0 for a in signs))


@pytest.mark.parametrize("loss_type", ["adv_ce", "adv_ratio"])
@pytest.mark.parametrize("pairs_per_batch", [1, 2])
def test_every_rollout_weighs_the_papers_constant_over_an_epoch(loss_type, pairs_per_batch):
    """d(epoch loss) / d(rollout i's term −A_i·log π) is 1 / (2·P·GA) for every rollout, whatever its prompt's
    split (10/10, 14/6, 17/3, 19/1): the paper's unpaired loss with 2P rollouts per micro-batch. The old pairs (Σw
    normalisation, cycled short side) gave 0.125, 0.167-0.188, 0.208-0.214 and 0.2375 at P = 1, GA = 4."""
    from trl_reasonmaxxer.losses import reasonmaxxer_loss

    ga = 4
    rows = paper_pool()
    pairs = build_pairs(rows, seed=0)
    assert len(pairs) == 40  # 80 rollouts, two per item: 40 / (P·GA) optimiser steps, 10 at P = 1
    position = {r["completion_ids"][0]: i for i, r in enumerate(rows)}
    x = torch.zeros(len(rows), dtype=torch.float64, requires_grad=True)  # log π of each rollout's one fork token
    collator = DataCollatorForForkPairs(pad_token_id=PAD)
    total = 0.0
    for start in range(0, len(pairs), pairs_per_batch):
        batch = collator(pairs[start : start + pairs_per_batch])
        index = [position[ids[1].item()] for ids in batch["input_ids"]]  # token 0 is the prompt
        logps = x[index][:, None]
        fork = torch.ones(len(index), 1, dtype=torch.bool)
        adv, w = batch["advantages"].double(), batch["weights"].double()
        loss, _ = reasonmaxxer_loss(loss_type, logps, torch.zeros_like(logps), adv, fork, ~fork, w, beta=0.0)
        total = total + loss / ga
    total.backward()
    per_term = x.grad / -batch_advantages(pairs, rows)  # the term is −A·log π at ratio 1 for both losses
    expected = 1 / (2 * pairs_per_batch * ga)
    for p in SPLITS:
        got = [per_term[i].item() for i, r in enumerate(rows) if r["prompt_index"] == p]
        assert got == pytest.approx([expected] * len(got), rel=1e-6), SPLITS[p]  # the collator's A is float32


def batch_advantages(pairs, rows) -> torch.Tensor:
    """Each rollout's advantage as the collator carries it (float32), in ``rows`` order."""
    by_uid = {}
    for pair in pairs:
        for side in ("chosen", "rejected"):
            by_uid[pair[f"{side}_completion_ids"][0]] = torch.tensor(pair[f"{side}_advantage"], dtype=torch.float32)
    return torch.stack([by_uid[r["completion_ids"][0]] for r in rows]).double()


def test_preference_pairs_keep_the_pair_as_the_unit_for_fork_dpo():
    pairs = build_pairs(paper_pool(), seed=0, preference=True)
    assert len(pairs) == 10 + 14 + 17 + 19  # one pair per rollout of the larger side


def test_an_epoch_of_80_rollouts_at_8_per_step_is_10_optimiser_steps(tmp_path):
    """The trainer sizes the epoch by rollouts: 80 selected rollouts, 1 item (2 rollouts) per batch, GA 4 → 10
    steps, each rollout seen once (the old pairs made 60 items → 15 steps); fork_dpo keeps its 60 pairs."""
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import save_tiny_model

    from .helpers import make_pool, tiny_config

    groups = {p: [(1.0, [0.5, 2.0, 0.5, 0.5])] * c + [(0.0, [2.0, 0.5, 0.5, 0.5])] * r for p, (c, r) in SPLITS.items()}
    pool = make_pool(groups, prompt_len=2, vocab=39)
    model = save_tiny_model(str(tmp_path / "model"))
    args = dict(max_steps=-1, num_train_epochs=1, gradient_accumulation_steps=4, fork_threshold=1.0)
    trainer = ReasonMaxxerTrainer(model, args=tiny_config(tmp_path / "run", **args), rollout_dataset=pool)
    trainer.train()
    assert len(trainer.train_dataset) == 40
    assert trainer.state.global_step == 10
    seen = Counter(
        tuple(c)
        for item in trainer.train_dataset
        for c in (item["chosen_completion_ids"], item["rejected_completion_ids"])
    )
    assert len(seen) == 80 and set(seen.values()) == {1}
    dpo = ReasonMaxxerTrainer(
        model, args=tiny_config(tmp_path / "dpo", loss_type="fork_dpo", **args), rollout_dataset=pool
    )
    assert len(dpo.prepare_training_data()) == 60


def test_a_row_scored_on_other_ids_is_refused_before_its_mask_shifts():
    row = rollout(0, 1, advantage=1.0, length=3)
    row.update(fork_mask=[True, False], logps=[0.0, 0.0])  # scored with one token fewer (an empty prompt)
    with pytest.raises(ValueError, match="prompt 0 has 3 completion tokens but 2 fork_mask entries, 2 logps entries"):
        build_pairs([row, rollout(0, 2, advantage=-1.0)], seed=0)
