"""The embedded-default demo: base evaluation → ReasonMaxxer (rollouts, selection, training) → adapter evaluation.

Runs on a real pretrained model and a real math task that both ship inside PyPI packages, so it needs no model hub.

```bash
trl-reasonmaxxer demo                                    # make demo: the default budget
trl-reasonmaxxer demo --quick                            # a smoke run in minutes
trl-reasonmaxxer demo --config examples/recipes/demo.yaml
```
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from ..config import ReasonMaxxerConfig
from ..default_model import DEFAULT_MODEL, resolve_model
from ..evaluation import evaluate, load_model_for_eval, plot_comparison
from ..rewards import math_accuracy_reward
from ..stats import describe, paired_differences
from ..tasks import PROMPT_TEMPLATES, load_prompts
from ..trainer import ReasonMaxxerTrainer
from .parser import QuickArguments, ScriptParser


@dataclass
class DemoConfig(QuickArguments):
    """
    Arguments of ``trl-reasonmaxxer demo``. The default budget is sized to finish in under 30 minutes on a 2-core
    CPU with the llama.cpp engine (docs/benchmarks.md); ``--quick`` is a smoke run of every step in minutes, not a
    measurement. The demo reports the paired per-problem difference with its 95% CI and says when its size cannot
    resolve it: the powered answer is the evidence run of ``compare``, not this.

    Parameters:
        > Model, data and output

        model_name_or_path (`str`, *optional*, defaults to `"default"`):
            `"default"` (the embedded Qwen2.5-Coder-0.5B-Instruct) or a local model folder.
        dataset_name (`str`, *optional*, defaults to `"svamp"`):
            A packaged task with a train and a test split, or a local `DatasetDict` folder with both.
        prompt_style (`str`, *optional*, defaults to `"brief"`):
            `"brief"` asks for short reasoning (the paper's wording makes the 0.5B write more than 128 tokens 90% of
            the time, which a 2-core CPU cannot afford) or `"paper"`.
        output_dir (`str`, *optional*, defaults to `"runs/demo"`):
            Where `demo.json`, `demo.png` and the adapter go (`"runs/demo-quick"` with `--quick`).
        seed (`int`, *optional*, defaults to `42`):
            Seed of the problem subsets, sampling and training.

        > Budget

        num_train_problems (`int`, *optional*, defaults to `12`):
            Problems of the train split the offline phase samples.
        num_test_problems (`int`, *optional*, defaults to `30`):
            Held-out problems of the test split both models are evaluated on.
        num_generations (`int`, *optional*, defaults to `8`):
            Rollouts per training problem (the paper: 20).
        num_samples (`int`, *optional*, defaults to `2`):
            Samples per test problem (T=0.6, top-p 0.95); pass@1 is unbiased from them.
        greedy (`bool`, *optional*, defaults to `True`):
            Also one greedy completion per test problem (greedy accuracy, paired like pass@1).
        max_completion_length (`int`, *optional*, defaults to `320`):
            Maximum tokens of every rollout and evaluation completion: the brief prompt's answers average ~195 tokens,
            and a truncated answer is graded wrong, so a tighter cap measures length, not reasoning.
        max_problems (`int`, *optional*, defaults to `6`):
            Mixed-success problems kept for training.
        learning_rate (`float`, *optional*, defaults to `1e-4`):
            AdamW learning rate of the LoRA (the paper's; 2e-4 was the demo's earlier default, see CHANGELOG.md).
        num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs over the preference pairs.
        max_steps (`int`, *optional*, defaults to `-1`):
            When > 0, caps the optimiser steps (`--quick`: one step shows that training runs, nothing more).
        gradient_accumulation_steps (`int`, *optional*, defaults to `4`):
            Pairs per optimiser step: the paper's 8 rollouts.
        warmup_steps (`float`, *optional*, defaults to `0`):
            The pairs give a few optimiser steps only: a linear warm-up would run the first of them at learning
            rate 0.

        > Generation engine (CPU)

        use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample the evaluations and the rollouts with llama.cpp (`ReasonMaxxerConfig.use_llama_cpp`): `true`,
            `false`, or unset for auto (no CUDA GPU, the `cpu` extra and the model's GGUF at hand). `demo.json`
            records the engine of each phase under `engines`.
        llama_cpp_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model as a GGUF file for llama.cpp (the embedded default model has its own).
    """

    # one generate call per phase (24 and 8 sequences) and one small optimiser step: ~10 minutes on 2 cores
    QUICK = dict(
        num_train_problems=6,
        num_test_problems=4,
        num_generations=4,
        num_samples=2,
        greedy=False,
        max_completion_length=192,
        max_problems=2,
        max_steps=1,
        gradient_accumulation_steps=2,
        output_dir="runs/demo-quick",
    )

    model_name_or_path: str = field(
        default="default", metadata={"help": "'default' (the embedded 0.5B) or a local model folder."}
    )
    dataset_name: str = field(
        default="svamp", metadata={"help": "Packaged task (train and test splits) or a local DatasetDict folder."}
    )
    prompt_style: str = field(
        default="brief",
        metadata={"help": "brief (short reasoning, what a CPU affords) or paper.", "choices": list(PROMPT_TEMPLATES)},
    )
    output_dir: str = field(default="runs/demo", metadata={"help": "Where the report, plot and adapter go."})
    seed: int = field(default=42, metadata={"help": "Seed of the problem subsets, sampling and training."})
    num_train_problems: int = field(default=12, metadata={"help": "Train-split problems the offline phase samples."})
    num_test_problems: int = field(
        default=30, metadata={"help": "Held-out test problems both models are evaluated on."}
    )
    num_generations: int = field(default=8, metadata={"help": "Rollouts per training problem."})
    num_samples: int = field(default=2, metadata={"help": "Samples per test problem (pass@1 is unbiased from them)."})
    greedy: bool = field(default=True, metadata={"help": "Also one greedy completion per test problem."})
    max_completion_length: int = field(default=320, metadata={"help": "Maximum tokens per rollout and completion."})
    max_problems: int = field(default=6, metadata={"help": "Mixed-success problems kept for training."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the LoRA."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the preference pairs."})
    max_steps: int = field(default=-1, metadata={"help": "> 0 caps the optimiser steps."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Pairs per optimiser step."})
    warmup_steps: float = field(default=0, metadata={"help": "Warm-up steps (a ratio if < 1); a few steps only: 0."})
    use_llama_cpp: bool | None = field(
        default=None, metadata={"help": "Evaluations and rollouts with llama.cpp on CPU: true, false; unset: auto."}
    )
    llama_cpp_model_path: str | None = field(
        default=None, metadata={"help": "GGUF file of the model for llama.cpp (the default model has its own)."}
    )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser(DemoConfig, prog=prog, description=__doc__.split("\n\n")[0])


def main(config: DemoConfig) -> dict:
    return run_demo(config)


def run_demo(config: DemoConfig | None = None) -> dict:
    """Run the whole method once and return (and save) the comparison table."""
    budget = config or DemoConfig()
    output_dir, model, task, seed = budget.output_dir, budget.model_name_or_path, budget.dataset_name, budget.seed
    label = "quick smoke run" if budget.quick else "default"
    os.makedirs(output_dir, exist_ok=True)
    times: dict[str, float] = {}
    use_cpu = not torch.cuda.is_available()

    start = time.perf_counter()
    # float32 on CPU, bfloat16 on a GPU that supports it, as eval and compare load models
    base, tokenizer = load_model_for_eval(resolve_model(model))
    train = load_prompts(task, "train", budget.num_train_problems, seed=seed, prompt_style=budget.prompt_style)
    test = load_prompts(task, "test", budget.num_test_problems, seed=seed, prompt_style=budget.prompt_style)
    times["load"] = time.perf_counter() - start

    # 32 sequences per generate call: CPU decoding of a 0.5B model is memory-bound, so wide batches are ~4x faster
    eval_kwargs = dict(
        num_samples=budget.num_samples,
        max_new_tokens=budget.max_completion_length,
        seed=seed,
        greedy=budget.greedy,
        batch_size=32,
        use_llama_cpp=budget.use_llama_cpp,
        llama_cpp_model_path=budget.llama_cpp_model_path,
    )
    start = time.perf_counter()
    base_results = evaluate(base, tokenizer, test, desc="Base model", **eval_kwargs)
    times["eval_base"] = time.perf_counter() - start

    trainer = demo_trainer(budget, base, tokenizer, train)
    train_demo_adapter(trainer, output_dir, times)

    start = time.perf_counter()
    # llama.cpp (when the rollouts used it) applies the adapter as a GGUF LoRA; transformers decodes a merged LoRA
    # at the base model's speed (the base weights are not needed any more)
    tuned = trainer.model if trainer.rollout_engine_name == "llama.cpp" else trainer.model.merge_and_unload()
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
        "engines": {
            "eval_base": base_results["summary"]["engine"],
            "rollouts": trainer.rollout_engine_name,
            "eval_reasonmaxxer": tuned_results["summary"]["engine"],
        },
        "wall_time_s": times,
        "base": base_results["summary"],
        "reasonmaxxer": tuned_results["summary"],
        "paired": paired_differences(tuned_results, base_results),
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


def demo_trainer(budget: DemoConfig, model, tokenizer, train) -> ReasonMaxxerTrainer:
    """The demo's trainer: its budget as a :class:`ReasonMaxxerConfig` (adapter under ``output_dir/reasonmaxxer``)
    on the ``train`` prompts."""
    args = ReasonMaxxerConfig(
        output_dir=os.path.join(budget.output_dir, "reasonmaxxer"),
        num_generations=budget.num_generations,
        max_completion_length=budget.max_completion_length,
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
        use_cpu=not torch.cuda.is_available(),
        seed=budget.seed,
        use_llama_cpp=budget.use_llama_cpp,
        llama_cpp_model_path=budget.llama_cpp_model_path,
    )
    return ReasonMaxxerTrainer(
        model=model, reward_funcs=[math_accuracy_reward], args=args, train_dataset=train, processing_class=tokenizer
    )


def train_demo_adapter(trainer: ReasonMaxxerTrainer, output_dir: str, times: dict[str, float]) -> str:
    """The offline phase and training of ``trainer``, their wall times put in ``times`` (``offline_phase``,
    ``training``); returns the adapter's folder, ``output_dir/adapter``."""
    start = time.perf_counter()
    trainer.prepare_training_data()
    times["offline_phase"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    times["training"] = time.perf_counter() - start
    adapter = os.path.join(output_dir, "adapter")
    trainer.save_model(adapter)
    return adapter


def format_table(report: dict) -> str:
    """A plain-text table of the demo's result."""
    k = report["budget"]["num_samples"]
    lines = [
        f"ReasonMaxxer demo ({report['label']}): {report['model']} on {report['task']} "
        f"(train split → {report['pool'].get('pool/prompts_selected', 0)} selected problems; "
        f"{report['budget']['num_test_problems']} held-out test problems), seed {report['seed']}, {report['device']}",
        f"{'model':<14}{'pass@1 (k=' + str(k) + ')':>20}{'extraction':>12}{'truncated':>11}{'mean tokens':>13}",
    ]
    for name in ("base", "reasonmaxxer"):
        s = report[name]
        lines.append(
            f"{name:<14}{s['pass@1']:>12.3f} ± {s['pass@1_stderr']:.3f}"
            f"{s['extraction_rate']:>12.2f}{s['truncation_rate']:>11.2f}{s['mean_completion_tokens']:>13.1f}"
        )
    for metric, diff in report.get("paired", {}).items():
        lines.append(describe(diff, f"paired {metric} difference (reasonmaxxer - base)"))
    if report.get("paired") and not any(d["resolved"] for d in report["paired"].values()):
        lines.append(
            "This demo's size cannot resolve an effect of the paper's size; the powered comparison is "
            "docs/benchmarks.md (GRPO vs ReasonMaxxer)."
        )
    if report.get("engines"):
        lines.append("engines: " + ", ".join(f"{k} {v}" for k, v in report["engines"].items()))
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["wall_time_s"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
