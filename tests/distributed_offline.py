"""The offline phase and 2 training steps on the tiny model, recording what this process saw.

``tests/test_distributed.py`` calls :func:`run` in-process (one process) and runs this file under
``torchrun --nproc_per_node 2`` (CPU, gloo), where each process writes ``<output_dir>/rank<k>.json``.
Usage, from the repository root: ``torchrun --standalone --nproc_per_node 2 -m tests.distributed_offline MODEL_DIR
OUTPUT_DIR``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from trl_reasonmaxxer import ReasonMaxxerTrainer

from .helpers import chat_prompts, tiny_config


def first_token_parity_reward(completion_ids, **kwargs):
    """1 when a rollout's first token id is even: a function of each rollout alone, so sharding cannot change it."""
    return [float(len(ids) > 0 and ids[0] % 2 == 0) for ids in completion_ids]


def run(model_dir: str, output_dir: str) -> dict:
    trainer = ReasonMaxxerTrainer(
        model=model_dir,
        reward_funcs=first_token_parity_reward,
        args=tiny_config(output_dir, rollout_chunk_size=2, max_steps=2, shuffle_dataset=False),
        train_dataset=chat_prompts(7),  # 4 chunks of 2 prompts, the last one short
    )
    seen: dict = {"pool": None, "scores": {}, "batches": []}
    build, scores, compute_loss = trainer.offline.build_pool, trainer.offline.score, trainer.compute_loss

    def record_pool(*args):
        seen["pool"] = build(*args)
        return seen["pool"]

    def record_scores(rows, row_ids):
        seen["scores"] = scores(rows, row_ids)
        return seen["scores"]

    def record_batch(model, inputs, **kwargs):
        seen["batches"].append(inputs["input_ids"].tolist())
        return compute_loss(model, inputs, **kwargs)

    trainer.offline.build_pool, trainer.offline.score, trainer.compute_loss = record_pool, record_scores, record_batch
    trainer.train()
    lora = [p.detach() for n, p in trainer.model.named_parameters() if "lora_B" in n]
    return {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "cache_dir": trainer.rollout_cache_dir,
        "pool": [
            {k: r[k] for k in ("prompt_index", "prompt_ids", "completion_ids", "truncated", "reward")}
            for r in seen["pool"]
        ],
        "scores": {str(i): entropy for i, (entropy, _) in seen["scores"].items()},
        "pairs": trainer.train_dataset.to_list(),
        "batches": seen["batches"],
        "steps": trainer.state.global_step,
        "lora_abs_sum": float(sum(p.abs().sum() for p in lora)),
        "lora_sum": float(sum(p.double().sum() for p in lora)),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    record = run(sys.argv[1], sys.argv[2])
    with open(os.path.join(sys.argv[2], f"rank{record['rank']}.json"), "w") as f:
        json.dump(record, f)
