"""The embedded-default demo: base evaluation → ReasonMaxxer (rollouts, selection, training) → adapter evaluation.

Runs on a real pretrained model and a real math task that both ship inside PyPI packages, so it needs no model hub.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from .config import ReasonMaxxerConfig
from .evaluation import evaluate, plot_comparison
from .models import DEFAULT_MODEL, resolve_model
from .rewards import math_accuracy_reward
from .tasks import load_task
from .trainer import ReasonMaxxerTrainer


@dataclass
class DemoBudget:
    """How much the demo does; ``quick`` is a smoke run, not a measurement."""

    train_problems: int = 10
    test_problems: int = 16
    num_generations: int = 6
    eval_samples: int = 2
    max_new_tokens: int = 224
    max_problems: int = 10
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 caps the optimiser steps (--quick: one step shows training runs, nothing more)
    gradient_accumulation_steps: int = 4  # pairs per step: the paper's 8 rollouts
    warmup_steps: float = 0  # a few steps only: a linear warm-up would run the first of them at lr 0
    # "brief" asks for short reasoning: the paper's wording makes the 0.5B write >128 tokens 90% of the time,
    # which a 2-core CPU cannot afford (tasks.BRIEF_PROMPT_TEMPLATE)
    prompt_style: str = "brief"

    @classmethod
    def quick(cls) -> DemoBudget:
        # one generate call per phase (24 and 8 sequences) and one small optimiser step: ~10 minutes on 2 cores
        return cls(
            train_problems=6,
            test_problems=4,
            num_generations=4,
            eval_samples=2,
            max_new_tokens=192,
            max_problems=2,
            max_steps=1,
            gradient_accumulation_steps=2,
        )


def run_demo(
    output_dir: str = "runs/demo",
    model: str = "default",
    task: str = "svamp",
    budget: DemoBudget | None = None,
    seed: int = 42,
    label: str = "default",
) -> dict:
    """Run the whole method once and return (and save) the comparison table."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    budget = budget or DemoBudget()
    os.makedirs(output_dir, exist_ok=True)
    times: dict[str, float] = {}
    use_cpu = not torch.cuda.is_available()

    start = time.perf_counter()
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if use_cpu else torch.bfloat16)
    base.to("cpu" if use_cpu else "cuda")
    train = load_task(task, "train", num_problems=budget.train_problems, seed=seed, prompt_style=budget.prompt_style)
    test = load_task(task, "test", num_problems=budget.test_problems, seed=seed, prompt_style=budget.prompt_style)
    times["load"] = time.perf_counter() - start

    # 32 sequences per generate call: CPU decoding of a 0.5B model is memory-bound, so wide batches are ~4x faster
    eval_kwargs = dict(
        num_samples=budget.eval_samples, max_new_tokens=budget.max_new_tokens, seed=seed, greedy=False, batch_size=32
    )
    start = time.perf_counter()
    base_results = evaluate(base, tokenizer, test, desc="Base model", **eval_kwargs)
    times["eval_base"] = time.perf_counter() - start

    args = ReasonMaxxerConfig(
        output_dir=os.path.join(output_dir, "reasonmaxxer"),
        num_generations=budget.num_generations,
        max_completion_length=budget.max_new_tokens,
        max_problems=budget.max_problems,
        learning_rate=budget.learning_rate,
        num_train_epochs=budget.num_train_epochs,
        max_steps=budget.max_steps,
        gradient_accumulation_steps=budget.gradient_accumulation_steps,
        warmup_steps=budget.warmup_steps,
        logging_steps=1,
        gradient_checkpointing=False,  # faster on CPU; a 0.5B model fits without it
        save_strategy="no",
        report_to="none",
        use_cpu=use_cpu,
        seed=seed,
    )
    trainer = ReasonMaxxerTrainer(
        model=base, reward_funcs=[math_accuracy_reward], args=args, train_dataset=train, processing_class=tokenizer
    )
    start = time.perf_counter()
    pairs = trainer.prepare_training_data()
    trainer.train_dataset = pairs
    times["offline_phase"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    times["training"] = time.perf_counter() - start
    trainer.save_model(os.path.join(output_dir, "adapter"))

    start = time.perf_counter()
    # llama.cpp (when the rollouts used it) applies the adapter as a GGUF LoRA; transformers decodes a merged LoRA
    # at the base model's speed (the base weights are not needed any more)
    tuned = trainer.model if trainer._llama_rollouts is not None else trainer.model.merge_and_unload()
    tuned_results = evaluate(tuned, tokenizer, test, desc="ReasonMaxxer", **eval_kwargs)
    times["eval_reasonmaxxer"] = time.perf_counter() - start

    report = {
        "label": label,
        "model": DEFAULT_MODEL if model == "default" else model,
        "task": task,
        "train_split": "train",
        "test_split": "test",
        "seed": seed,
        "budget": asdict(budget),
        "device": "cpu" if use_cpu else torch.cuda.get_device_name(0),
        "pool": trainer.pool_stats,
        "wall_time_s": times,
        "base": base_results["summary"],
        "reasonmaxxer": tuned_results["summary"],
    }
    with open(os.path.join(output_dir, "demo.json"), "w") as f:
        json.dump(
            report | {"records": {"base": base_results["records"], "reasonmaxxer": tuned_results["records"]}},
            f,
            indent=2,
        )
    plot_comparison(
        {"base": base_results, "ReasonMaxxer": tuned_results}, os.path.join(output_dir, "demo.png"), metric="pass@1"
    )
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    """A plain-text table of the demo's result."""
    k = report["budget"]["eval_samples"]
    lines = [
        f"ReasonMaxxer demo ({report['label']}): {report['model']} on {report['task']} "
        f"(train split → {report['pool'].get('pool/prompts_selected', 0)} selected problems; "
        f"{report['budget']['test_problems']} held-out test problems), seed {report['seed']}, {report['device']}",
        f"{'model':<14}{'pass@1 (k=' + str(k) + ')':>20}{'extraction':>12}{'truncated':>11}{'mean tokens':>13}",
    ]
    for name in ("base", "reasonmaxxer"):
        s = report[name]
        lines.append(
            f"{name:<14}{s['pass@1']:>12.3f} ± {s['pass@1_stderr']:.3f}"
            f"{s['extraction_rate']:>12.2f}{s['truncation_rate']:>11.2f}{s['mean_completion_tokens']:>13.1f}"
        )
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["wall_time_s"].items()))
    return "\n".join(lines)
