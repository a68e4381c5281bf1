"""Multi-process offline phase: sharding is invisible in the pool, and ``torchrun`` on 2 CPU processes trains (DDP)
on exactly the one-process pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from trl_reasonmaxxer import ReasonMaxxerTrainer, offline
from trl_reasonmaxxer.cache import ChunkCache, model_fingerprint, shard
from trl_reasonmaxxer.offline import generate_pool, score_pool

from .distributed_offline import run
from .helpers import CallCounter, alternating_reward, chat_prompts, is_close_list, tiny_config


TESTS = Path(__file__).parent


@pytest.mark.parametrize("n, world", [(7, 2), (3, 4), (8, 3), (0, 2)])
def test_shards_are_contiguous_balanced_and_cover_everything_once(n, world):
    shards = [shard(range(n), rank, world) for rank in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # concatenated in rank order: the original order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        shard([1, 2, 3], 2, 2)


def fake_generate(indices):
    """Per prompt two rollouts whose ids encode the prompt index: a stand-in for a seeded generator."""
    return [[{"completion_ids": [i, j], "truncated": j == 1} for j in range(2)] for i in indices]


def test_sharded_generation_gathers_into_the_single_process_pool(tmp_path):
    prompts = [[100 + i] for i in range(7)]
    single = generate_pool(fake_generate, prompts, ChunkCache(str(tmp_path / "one")), chunk_size=2)
    cache = ChunkCache(str(tmp_path / "two"))
    parts = [generate_pool(fake_generate, prompts, cache, 2, rank=r, world=2) for r in range(2)]
    assert parts[0] + parts[1] == single
    assert {r["prompt_index"] for r in parts[0]} == {0, 1, 2, 3}  # chunks 0-1 of 4: whole chunks per process
    assert sorted(os.listdir(tmp_path / "two" / "generations")) == [f"chunk-0000{c}.jsonl" for c in range(4)]
    # a later run, with any number of processes, reuses every chunk
    never = CallCounter(fake_generate, fail_on=1)
    assert generate_pool(never, prompts, cache, 2) == single and never.calls == 0


def test_sharded_scoring_scores_each_row_once_and_reuses_the_cache(tmp_path):
    rows = [{"prompt_ids": [1], "completion_ids": [i, i + 1]} for i in range(10)]
    row_ids = [0, 2, 3, 5, 6, 7, 9]

    def score(sequences):
        return [([float(c[0])] * 2, [-float(c[0])] * 2) for _, c in sequences]

    cache = ChunkCache(str(tmp_path))
    counters = [CallCounter(score) for _ in range(2)]
    parts = [score_pool(counters[r], rows, row_ids, cache, chunk_size=2, rank=r, world=2) for r in range(2)]
    assert list(parts[0]) == [0, 2, 3] and list(parts[1]) == [5, 6, 7, 9]
    assert {**parts[0], **parts[1]} == {i: ([float(i)] * 2, [-float(i)] * 2) for i in row_ids}
    assert [c.calls for c in counters] == [2, 2]
    # chunks are named after their first row, so the two processes never wrote the same file
    assert sorted(os.listdir(tmp_path / "scores")) == [f"chunk-0000{i}.jsonl" for i in (0, 3, 5, 7)]
    # one process, more rows: only the new row is scored
    again = CallCounter(score)
    assert score_pool(again, rows, row_ids + [8], cache, chunk_size=2)[8] == ([8.0] * 2, [-8.0] * 2)
    assert again.calls == 1


def test_model_fingerprint_is_computed_once(tiny_model_dir, tmp_path, monkeypatch):
    counter = CallCounter(model_fingerprint)
    monkeypatch.setattr(offline, "model_fingerprint", counter)
    trainer = ReasonMaxxerTrainer(
        model=tiny_model_dir,
        reward_funcs=alternating_reward,
        args=tiny_config(tmp_path),
        train_dataset=chat_prompts(3),
    )
    first = trainer.rollout_cache_dir
    trainer.train()
    assert trainer.rollout_cache_dir == first
    assert counter.calls == 1


def close_pairs(a: list[dict], b: list[dict]) -> bool:
    """Equal pairs, with their float lists (base log-probs) equal within 1e-5."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for key in x.keys() | y.keys():
            u, v = x.get(key), y.get(key)
            floats = isinstance(u, list) and u and isinstance(u[0], float)
            if not (is_close_list(u, v) if floats else u == v):
                return False
    return True


@pytest.mark.slow
def test_torchrun_two_processes_build_the_one_process_pool_and_train_on_it(tiny_model_dir, tmp_path):
    one = run(tiny_model_dir, str(tmp_path / "one"))
    two_dir = tmp_path / "two"
    two_dir.mkdir()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--module",
        "tests.distributed_offline",
        tiny_model_dir,
        str(two_dir),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((two_dir / f"rank{r}.json").read_text()) for r in range(2)]

    assert one["world"] == 1 and [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    # the cache key does not depend on the number of processes
    assert {Path(r["cache_dir"]).name for r in ranks} == {Path(one["cache_dir"]).name}
    # the same pool, gathered on every rank: same rollouts, same rewards, same entropies
    assert 0 < sum(r["reward"] for r in one["pool"]) < len(one["pool"])
    for rank in ranks:
        assert rank["pool"] == one["pool"]
        assert rank["scores"].keys() == one["scores"].keys()
        assert all(is_close_list(rank["scores"][i], one["scores"][i]) for i in one["scores"])
        # every rank trained on the same selected pool: the same preference pairs
        assert close_pairs(rank["pairs"], one["pairs"])
    # rank 0 wrote the pool, and it is the gathered one
    saved = load_from_disk(os.path.join(ranks[0]["cache_dir"], "pool"))
    assert [r["completion_ids"] for r in saved] == [r["completion_ids"] for r in one["pool"]]
    # DDP: 2 steps on each rank, different pairs per rank, one synchronised adapter
    assert [r["steps"] for r in ranks] == [2, 2] and all(len(r["batches"]) == 2 for r in ranks)
    assert all(b0 != b1 for b0, b1 in zip(ranks[0]["batches"], ranks[1]["batches"]))
    assert ranks[0]["lora_abs_sum"] > 0
    assert ranks[0]["lora_sum"] == ranks[1]["lora_sum"] and ranks[0]["lora_abs_sum"] == ranks[1]["lora_abs_sum"]
