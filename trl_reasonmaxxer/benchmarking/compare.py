"""GRPO (TRL's own ``GRPOTrainer``) vs ReasonMaxxer on the same model, data, LoRA, reward and evaluation.

One run: split problems into a training pool, a validation set (GRPO's checkpoint curve) and a disjoint held-out
test set; evaluate the base model; per seed, train GRPO while evaluating on validation every few steps, train
ReasonMaxxer (offline phase included), and evaluate both adapters on the test set; optionally a gate ablation.
Every method gets a :class:`~.ledger.CostLedger`. The headline is the compute GRPO needs to reach ReasonMaxxer's
validation gain over the base model, divided by ReasonMaxxer's compute.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..tasks import PROMPT_TEMPLATES
from .ledger import COMPUTE_UNITS
from .report import (
    build_report,
    eval_generated_tokens,
    format_table,
    mean_curve,
    plot_curve,
    split_indices,
)


# raw results so far, rewritten after every method; removed once compare.json is written
PARTIAL_JSON = "compare.partial.json"


@dataclass
class CompareConfig:
    """
    How much the comparison does (the budget flags of ``trl-reasonmaxxer compare``). The default (one seed) took
    ≈ 54 minutes on a 2-core CPU with the 0.5B default model, 78 with ``--gate_ablation`` (docs/benchmarks.md); its
    6-problem validation set is too small for a headline ratio, so raise ``num_validation_problems`` where compute
    allows.

    Parameters:
        > Data

        num_pool_problems (`int`, *optional*, defaults to `8`):
            Training pool of both methods.
        num_validation_problems (`int`, *optional*, defaults to `6`):
            Validation set: GRPO's checkpoint curve and ReasonMaxxer's gain for the headline.
        num_test_problems (`int`, *optional*, defaults to `12`):
            Held-out test set (final numbers only).

        > Shared by both methods

        num_generations (`int`, *optional*, defaults to `6`):
            Rollouts per prompt (GRPO's group size, ReasonMaxxer's offline samples).
        max_completion_length (`int`, *optional*, defaults to `224`):
            Completion budget of rollouts and evaluation (160 truncated 79% of the 0.5B default's SVAMP rollouts).
        learning_rate (`float`, *optional*, defaults to `2e-4`):
            AdamW, for both LoRAs.
        prompt_style (`str`, *optional*, defaults to `"brief"`):
            `"brief"` (short reasoning; what a CPU can afford with the 0.5B default) or `"paper"` (tasks.py).

        > Evaluation (same protocol for every model; T=0.6, top-p 0.95)

        num_samples (`int`, *optional*, defaults to `2`):
            Samples per test problem (pass@1 is unbiased from them), plus one greedy completion.
        num_validation_samples (`int`, *optional*, defaults to `2`):
            Samples per validation problem (no greedy).

        > GRPO

        grpo_max_steps (`int`, *optional*, defaults to `4`):
            Optimiser steps (GRPO's budget B).
        grpo_eval_every (`int`, *optional*, defaults to `2`):
            Validation evaluation every N steps (and after the last).
        grpo_prompts_per_step (`int`, *optional*, defaults to `1`):
            Prompts per step, each with `num_generations` completions.

        > ReasonMaxxer

        max_problems (`int`, *optional*, defaults to `8`):
            Mixed-success problems kept.

        > Generation engine (CPU)

        use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample every evaluation and ReasonMaxxer's rollouts with llama.cpp (`ReasonMaxxerConfig.use_llama_cpp`):
            `true`, `false`, or unset for auto (no CUDA GPU, the `cpu` extra and the model's GGUF at hand).
        llama_cpp_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model as a GGUF file for llama.cpp (the embedded default model has its own).
        grpo_use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample GRPO's rollouts with llama.cpp too, through TRL's `rollout_func` (its LoRA exported to the engine
            at every step; `llama_engine.GRPORollouts`). `None` follows `use_llama_cpp`, so both methods sample on
            the same engine and the wall-clock headline compares like with like; `false` runs GRPO as TRL does
            (then the wall-clock headline includes the engine's speed-up for ReasonMaxxer; the token headline
            does not).
    """

    num_pool_problems: int = field(default=8, metadata={"help": "Training pool of both methods."})
    num_validation_problems: int = field(
        default=6, metadata={"help": "Validation set: GRPO's curve and ReasonMaxxer's gain for the headline."}
    )
    num_test_problems: int = field(default=12, metadata={"help": "Held-out test set (final numbers only)."})
    num_generations: int = field(default=6, metadata={"help": "Rollouts per prompt, for both methods."})
    max_completion_length: int = field(default=224, metadata={"help": "Completion budget of rollouts and evaluation."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate of both LoRAs."})
    num_samples: int = field(default=2, metadata={"help": "Samples per test problem, plus one greedy completion."})
    num_validation_samples: int = field(default=2, metadata={"help": "Samples per validation problem (no greedy)."})
    grpo_max_steps: int = field(default=4, metadata={"help": "GRPO's optimiser steps (its budget B)."})
    grpo_eval_every: int = field(default=2, metadata={"help": "GRPO validation evaluation every N steps."})
    grpo_prompts_per_step: int = field(
        default=1, metadata={"help": "GRPO prompts per step, each with num_generations completions."}
    )
    max_problems: int = field(default=8, metadata={"help": "Mixed-success problems ReasonMaxxer keeps."})
    prompt_style: str = field(
        default="brief", metadata={"help": "brief (short reasoning) or paper.", "choices": list(PROMPT_TEMPLATES)}
    )
    use_llama_cpp: bool | None = field(
        default=None,
        metadata={"help": "Evaluations and ReasonMaxxer's rollouts with llama.cpp: true, false; unset: auto."},
    )
    llama_cpp_model_path: str | None = field(
        default=None, metadata={"help": "GGUF file of the model for llama.cpp (the default model has its own)."}
    )
    grpo_use_llama_cpp: bool | None = field(
        default=None,
        metadata={"help": "GRPO's rollouts with llama.cpp (TRL's rollout_func); unset: as use_llama_cpp."},
    )


def load_splits(dataset_name: str, budget: CompareConfig, split_seed: int) -> dict:
    """``{"pool", "validation", "test"}`` datasets with ``prompt`` and ``solution`` columns, pairwise disjoint.

    A packaged task: pool and validation come from its train split, test from its test split. A local dataset (a
    ``save_to_disk`` folder or a json/jsonl/parquet/csv file with ``prompt`` and ``solution`` columns, read by
    :func:`~trl_reasonmaxxer.tasks.load_local_dataset`): all three from its rows.
    """
    from ..tasks import TASKS, load_local_dataset, load_task

    if dataset_name not in TASKS:
        data = load_local_dataset(dataset_name)
        missing = {"prompt", "solution"} - set(data.column_names)
        if missing:
            raise ValueError(
                f"{dataset_name} lacks the columns {sorted(missing)}: give every row a prompt and a solution."
            )
        if "id" not in data.column_names:
            data = data.add_column("id", [f"{os.path.basename(dataset_name)}/{i}" for i in range(len(data))])
        sizes = {
            "pool": budget.num_pool_problems,
            "validation": budget.num_validation_problems,
            "test": budget.num_test_problems,
        }
        return {name: data.select(idx) for name, idx in split_indices(len(data), sizes, split_seed).items()}
    train = load_task(dataset_name, "train", prompt_style=budget.prompt_style)
    sizes = {"pool": budget.num_pool_problems, "validation": budget.num_validation_problems}
    parts = split_indices(len(train), sizes, split_seed)
    return {
        "pool": train.select(parts["pool"]),
        "validation": train.select(parts["validation"]),
        "test": load_task(
            dataset_name,
            "test",
            num_problems=budget.num_test_problems,
            seed=split_seed,
            prompt_style=budget.prompt_style,
        ),
    }


class _Runner:
    """Shared state of one comparison: model path, splits, budget, reward, evaluation protocol."""

    def __init__(self, model_path, splits, budget, reward_fn, output_dir, eval_seed, unit):
        import torch

        self.model_path, self.splits, self.budget = model_path, splits, budget
        self.reward_fn, self.output_dir, self.eval_seed, self.unit = reward_fn, output_dir, eval_seed, unit
        self.use_cpu = not torch.cuda.is_available()

    def load(self):
        from ..evaluation import load_model_for_eval

        return load_model_for_eval(self.model_path)

    def evaluate(self, model, tokenizer, split: str, desc: str, ledger=None) -> dict:
        from ..evaluation import evaluate

        b = self.budget
        samples, greedy = (b.num_samples, True) if split == "test" else (b.num_validation_samples, False)
        run = lambda: evaluate(
            model,
            tokenizer,
            self.splits[split],
            num_samples=samples,
            greedy=greedy,
            max_new_tokens=b.max_completion_length,
            seed=self.eval_seed,
            batch_size=32,
            reward_fn=self.reward_fn,
            desc=desc,
            use_llama_cpp=b.use_llama_cpp,
            llama_cpp_model_path=b.llama_cpp_model_path,
        )
        if ledger is None:
            return run()
        with ledger.phase("evaluation"):
            result = run()
        ledger.add_tokens("evaluation", generated=eval_generated_tokens(result["summary"]))
        return result

    def new_ledger(self, method, model):
        from .ledger import CostLedger, device_name

        ledger = CostLedger(method, device=device_name())
        ledger.count_forward_tokens(model)
        ledger.start_memory()
        return ledger

    def common_args(self, seed: int) -> dict:
        b = self.budget
        # no warm-up: with a handful of optimiser steps a linear warm-up spends the first one at lr 0
        return dict(
            max_completion_length=b.max_completion_length,
            temperature=0.6,
            top_p=0.95,
            learning_rate=b.learning_rate,
            warmup_steps=0,
            logging_steps=1,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to="none",
            use_cpu=self.use_cpu,
            bf16=not self.use_cpu,
            seed=seed,
        )

    def run_grpo(self, seed: int, base_val: float) -> dict:
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from ..config import default_lora_config
        from ..llama_engine import grpo_rollout_func

        b, runner = self.budget, self
        model, tokenizer = self.load()
        ledger = self.new_ledger("grpo", model)
        grpo_engine = b.use_llama_cpp if b.grpo_use_llama_cpp is None else b.grpo_use_llama_cpp
        rollout_func = grpo_rollout_func(model, grpo_engine, b.llama_cpp_model_path)
        curve = [{"step": 0, "compute": dict.fromkeys(COMPUTE_UNITS, 0.0), "pass@1": base_val, "gain": 0.0}]

        class ValidationCurve(TrainerCallback):
            """Evaluates on the validation set every ``grpo_eval_every`` steps and at the end (charged to
            evaluation, so it is not GRPO's cost)."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % b.grpo_eval_every and state.global_step != state.max_steps:
                    return
                compute = {u: ledger.compute(u) for u in COMPUTE_UNITS}
                score = runner.evaluate(model, tokenizer, "validation", f"GRPO step {state.global_step}", ledger)
                score = score["summary"]["pass@1"]
                curve.append(
                    {"step": state.global_step, "compute": compute, "pass@1": score, "gain": score - base_val}
                )

        args = GRPOConfig(
            output_dir=os.path.join(self.output_dir, f"seed{seed}", "grpo"),
            max_steps=b.grpo_max_steps,
            per_device_train_batch_size=b.num_generations * b.grpo_prompts_per_step,
            gradient_accumulation_steps=1,
            num_generations=b.num_generations,
            **self.common_args(seed),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[self.reward_fn],
            args=args,
            train_dataset=self.splits["pool"],
            processing_class=tokenizer,
            peft_config=default_lora_config(model),
            callbacks=[ValidationCurve()],
            rollout_func=rollout_func,
        )
        ledger.wrap(trainer, "_generate", "generation", count_generated=lambda out: sum(map(len, out[1])))
        ledger.wrap(trainer, "_generate_and_score_completions", "scoring")
        with ledger.phase("training"):
            trainer.train()
        ledger.extra["grpo_num_input_tokens_seen"] = trainer.state.num_input_tokens_seen
        ledger.extra["steps"] = trainer.state.global_step
        test = self.evaluate(trainer.model, tokenizer, "test", "GRPO (test)", ledger)
        ledger.finish_memory()
        trainer.save_model(os.path.join(args.output_dir, "adapter"))
        engines = {"rollouts": "transformers" if rollout_func is None else "llama.cpp"}
        if rollout_func is not None:
            rollout_func.close()
        _free(trainer, model)
        engines["evaluation"] = test["summary"]["engine"]
        return {"test": test, "validation_curve": curve, "ledger": ledger.to_dict(), "engines": engines}

    def run_reasonmaxxer(self, seed: int, gate: str, with_validation: bool) -> dict:
        from ..config import ReasonMaxxerConfig
        from ..trainer import ReasonMaxxerTrainer

        b = self.budget
        model, tokenizer = self.load()
        ledger = self.new_ledger(f"reasonmaxxer/{gate}", model)
        # one output_dir per seed for every gate: the gate ablation reuses the cached rollouts and scores
        args = ReasonMaxxerConfig(
            output_dir=os.path.join(self.output_dir, f"seed{seed}", "reasonmaxxer"),
            num_generations=b.num_generations,
            max_problems=b.max_problems,
            fork_gate=gate,
            use_llama_cpp=b.use_llama_cpp,
            llama_cpp_model_path=b.llama_cpp_model_path,
            **self.common_args(seed),
        )
        trainer = ReasonMaxxerTrainer(
            model=model,
            reward_funcs=[self.reward_fn],
            args=args,
            train_dataset=self.splits["pool"],
            processing_class=tokenizer,
        )
        ledger.wrap(
            trainer.offline,
            "generate",
            "generation",
            count_generated=lambda groups: sum(len(c["completion_ids"]) for g in groups for c in g),
        )
        with ledger.phase("scoring"):
            trainer.prepare_training_data()
        with ledger.phase("training"):
            trainer.train()
        out = {"pool": trainer.pool_stats}
        if with_validation:
            out["validation"] = self.evaluate(trainer.model, tokenizer, "validation", "ReasonMaxxer (val)", ledger)
        out["test"] = self.evaluate(trainer.model, tokenizer, "test", f"ReasonMaxxer {gate} (test)", ledger)
        out["engines"] = {"rollouts": trainer.rollout_engine_name, "evaluation": out["test"]["summary"]["engine"]}
        ledger.finish_memory()
        trainer.save_model(os.path.join(self.output_dir, f"seed{seed}", f"reasonmaxxer-{gate}", "adapter"))
        _free(trainer, model)
        return out | {"ledger": ledger.to_dict()}


def _free(*objects) -> None:
    import torch

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_comparison(
    output_dir: str = "runs/compare",
    model: str = "default",
    dataset_name: str = "svamp",
    budget: CompareConfig | None = None,
    seeds: Sequence[int] = (42,),
    gate_ablation: bool = False,
    reward_fn: Callable | None = None,
    split_seed: int = 42,
    label: str = "default",
) -> dict:
    """Run the whole comparison, print the table, write ``compare.json``, ``compare_pass1.png`` and
    ``compare_curve.png`` (and ``compare_curve_tokens.png``) under ``output_dir``; return the report."""
    from ..default_model import DEFAULT_MODEL, resolve_model
    from ..evaluation import plot_comparison
    from ..rewards import math_accuracy_reward
    from .ledger import CostLedger, device_name

    budget = budget or CompareConfig()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("Give at least one seed (--seeds 42).")
    reward_fn = reward_fn or math_accuracy_reward
    os.makedirs(output_dir, exist_ok=True)
    splits = load_splits(dataset_name, budget, split_seed)
    runner = _Runner(resolve_model(model), splits, budget, reward_fn, output_dir, seeds[0], COMPUTE_UNITS[0])

    base_model, tokenizer = runner.load()
    base_ledger = CostLedger("base", device=device_name())
    base = {
        "test": runner.evaluate(base_model, tokenizer, "test", "Base (test)", base_ledger),
        "validation": runner.evaluate(base_model, tokenizer, "validation", "Base (val)", base_ledger),
        "ledger": base_ledger.to_dict(),
    }
    base["engines"] = {"evaluation": base["test"]["summary"]["engine"]}
    _free(base_model)
    base_val = base["validation"]["summary"]["pass@1"]

    runs = []
    for seed in seeds:
        # raw results are written after every method, so an interrupted comparison keeps what it measured
        run = {"seed": seed}
        _save_json({"base": base, "runs": runs + [run]}, output_dir, PARTIAL_JSON)
        run["grpo"] = runner.run_grpo(seed, base_val)
        _save_json({"base": base, "runs": runs + [run]}, output_dir, PARTIAL_JSON)
        run["reasonmaxxer"] = runner.run_reasonmaxxer(seed, "entropy", with_validation=True)
        if gate_ablation:
            run["gate_ablation"] = {}
            for gate in ("random", "all"):
                _save_json({"base": base, "runs": runs + [run]}, output_dir, PARTIAL_JSON)
                run["gate_ablation"][gate] = runner.run_reasonmaxxer(seed, gate, with_validation=False)
        runs.append(run)
        _save_json(
            build_report(budget, model, dataset_name, seeds, splits, base, runs, gate_ablation, label), output_dir
        )

    report = build_report(budget, model, dataset_name, seeds, splits, base, runs, gate_ablation, label)
    _save_json(report, output_dir)
    os.remove(os.path.join(output_dir, PARTIAL_JSON))
    methods = report["summary"]["methods"]
    plot_comparison(
        {name: {"pass@1": m["pass@1"][0], "pass@1_stderr": m["pass@1"][1]} for name, m in methods.items()},
        os.path.join(output_dir, "compare_pass1.png"),
    )
    rm_point = report["summary"]["reasonmaxxer_validation"]
    for unit in COMPUTE_UNITS:
        curve = mean_curve([r["grpo"]["validation_curve"] for r in runs], unit)
        suffix = "" if unit == "wall_s" else f"_{unit}"
        plot_curve(
            {"GRPO": curve},
            {"ReasonMaxxer": (rm_point["compute"][unit], rm_point["gain"])},
            os.path.join(output_dir, f"compare_curve{suffix}.png"),
            unit,
        )
    report["config"]["model"] = DEFAULT_MODEL if model == "default" else model
    print(format_table(report), flush=True)
    return report


def _save_json(report: dict, output_dir: str, name: str = "compare.json") -> str:
    path = os.path.join(output_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)
    return path
