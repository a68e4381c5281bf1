"""Offline-phase rollout speed: HF ``generate`` against vLLM (``use_vllm=True``) on the same prompts and settings.

Runs ``trainer.build_rollout_dataset()`` without the cache once per backend, prints a table and writes JSON. vLLM
needs a GPU and ``pip install trl-reasonmaxxer[vllm]``; without it only the HF row is measured.

    python benchmarks/rollout_speed.py --out runs/rollout_speed.json            # the default 0.5B model, SVAMP
    python benchmarks/rollout_speed.py --quick                                 # tiny local model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer
from trl_reasonmaxxer.rewards import math_accuracy_reward
from trl_reasonmaxxer.vllm_backend import vllm_importable


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder")
    parser.add_argument("--task", default="svamp")
    parser.add_argument("--num-problems", type=int, default=64)
    parser.add_argument("--num-generations", type=int, default=20)
    parser.add_argument("--max-completion-length", type=int, default=512)
    parser.add_argument("--rollout-batch-size", type=int, default=64, help="sequences per HF generate call")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny local model and budget: a smoke run only")
    parser.add_argument("--out", default="runs/rollout_speed.json")
    return parser.parse_args()


def setup(ns: argparse.Namespace, workdir: str):
    """Model path and prompt dataset: the tiny test model with --quick, else the requested model and task."""
    if ns.quick:
        from datasets import Dataset

        from trl_reasonmaxxer.testing import save_tiny_model

        ns.num_problems, ns.num_generations, ns.max_completion_length = 4, 4, 8
        prompts = [[{"role": "user", "content": f"what is {i} plus {i} ?"}] for i in range(ns.num_problems)]
        data = Dataset.from_dict({"prompt": prompts, "solution": [str(2 * i) for i in range(ns.num_problems)]})
        return save_tiny_model(os.path.join(workdir, "tiny")), data
    from trl_reasonmaxxer.default_model import resolve_model
    from trl_reasonmaxxer.tasks import load_task

    return resolve_model(ns.model), load_task(ns.task, "train", num_problems=ns.num_problems, seed=0)


def measure(model: str, data, ns: argparse.Namespace, use_vllm: bool, workdir: str) -> dict:
    args = ReasonMaxxerConfig(
        output_dir=os.path.join(workdir, "vllm" if use_vllm else "hf"),
        rollout_cache=False,
        use_vllm=use_vllm,
        num_generations=ns.num_generations,
        max_completion_length=ns.max_completion_length,
        rollout_batch_size=ns.rollout_batch_size,
        vllm_gpu_memory_utilization=ns.gpu_memory_utilization,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
    )
    trainer = ReasonMaxxerTrainer(model=model, reward_funcs=math_accuracy_reward, args=args, train_dataset=data)
    start = time.perf_counter()
    pool = trainer.build_rollout_dataset()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in pool["completion_ids"])
    graded = [r for r in pool["reward"] if r == r]  # NaN: the gold answer did not parse
    return {
        "backend": "vllm" if use_vllm else "hf generate",
        "prompts": len(data),
        "rollouts": len(pool),
        "completion_tokens": tokens,
        "seconds": seconds,
        "rollouts_per_s": len(pool) / seconds,
        "tokens_per_s": tokens / seconds,
        "mean_reward": sum(graded) / max(len(graded), 1),
        "truncation_rate": sum(pool["truncated"]) / len(pool),
    }


def main() -> None:
    ns = parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        model, data = setup(ns, workdir)
        results = [measure(model, data, ns, use_vllm=False, workdir=workdir)]
        if vllm_importable() and torch.cuda.is_available():
            results.append(measure(model, data, ns, use_vllm=True, workdir=workdir))
        else:
            print("vLLM or a GPU is missing: only HF generate was measured.")
    base = results[0]["tokens_per_s"]
    print(f"{'backend':<12} {'rollouts':>8} {'tokens':>8} {'seconds':>8} {'tok/s':>9} {'speed-up':>8} {'reward':>7}")
    for r in results:
        r["speedup"] = r["tokens_per_s"] / base
        print(
            f"{r['backend']:<12} {r['rollouts']:>8} {r['completion_tokens']:>8} {r['seconds']:>8.1f} "
            f"{r['tokens_per_s']:>9.1f} {r['speedup']:>7.2f}x {r['mean_reward']:>7.3f}"
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    with open(ns.out, "w") as f:
        json.dump({"device": device, "settings": vars(ns), "results": results}, f, indent=2)
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
