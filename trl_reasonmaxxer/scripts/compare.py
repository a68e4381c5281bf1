"""GRPO (TRL's ``GRPOTrainer``) vs ReasonMaxxer on the same model, data, LoRA, reward and evaluation, with a cost
ledger per method (the harness is :mod:`trl_reasonmaxxer.benchmarking`; docs/benchmarks.md has the measured runs).

```bash
trl-reasonmaxxer compare --quick                               # a smoke run in minutes
trl-reasonmaxxer compare --gate_ablation                       # the default budget, plus the random and all gates
trl-reasonmaxxer compare --config examples/recipes/compare.yaml
trl-reasonmaxxer compare --config examples/recipes/evidence.yaml --methods reasonmaxxer --seeds 1   # one piece
trl-reasonmaxxer compare --config examples/recipes/evidence.yaml --aggregate_only true               # no model
```

Arguments come from two dataclasses: [`CompareScriptArguments`] (model, data, reward, seeds, output) and
[`~trl_reasonmaxxer.benchmarking.compare.CompareConfig`] (the budget).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..benchmarking.compare import CompareConfig
from .parser import QuickArguments, ScriptParser


@dataclass
class CompareScriptArguments(QuickArguments):
    """
    What ``trl-reasonmaxxer compare`` compares on, and where it writes.

    Parameters:
        model_name_or_path (`str`, *optional*, defaults to `"default"`):
            `"default"` (the embedded Qwen2.5-Coder-0.5B-Instruct) or a local model folder.
        dataset_name (`str`, *optional*, defaults to `"svamp"`):
            A packaged task (pool and validation from its train split, test from its test split), or a local dataset
            (folder or json/jsonl/parquet/csv file with `prompt` and `solution` columns) split three ways.
        reward_func (`str`, *optional*, defaults to `"math_accuracy_reward"`):
            The one reward both methods train with and every evaluation grades with: a name in
            `trl_reasonmaxxer.rewards` or `trl.rewards`, or a dotted path `my_lib.my_reward`.
        seeds (`list[int]`, *optional*, defaults to `[42]`):
            Training seeds; the first is also the evaluation sampling seed. The table pools them.
        split_seed (`int`, *optional*, defaults to `42`):
            Seed of the pool / validation / test split.
        gate_ablation (`bool`, *optional*, defaults to `False`):
            Also train ReasonMaxxer with the random (budget-matched) and the all-token gate.
        output_dir (`str`, *optional*, defaults to `"runs/compare"`):
            Where `evidence.json`, its table and plots, the adapters and the rollout caches go
            (`"runs/compare-quick"` with `--quick`).
        pieces_dir (`str` or `None`, *optional*, defaults to `None`):
            Where each finished (method, seed) is written as a small JSON piece, and where finished pieces are found
            and skipped when the run starts again; `None`: `<output_dir>/pieces`.
        methods (`list[str]` or `None`, *optional*, defaults to `None`):
            Run only these methods (with `--seeds`: only these seeds), e.g. `--methods reasonmaxxer --seeds 1`:
            `base`, `reasonmaxxer`, `grpo` (or `grpo_equal`, `grpo_3x`... with `grpo_compute_multiples`),
            `reasonmaxxer_random`, `reasonmaxxer_all` (with `gate_ablation`). The base model runs first whenever its
            piece is missing. `None`: all of them.
        aggregate_only (`bool`, *optional*, defaults to `False`):
            Run nothing: rebuild `evidence.json`, its table and plots under `output_dir` from the pieces in
            `pieces_dir`, listing the pieces that `seeds`, `gate_ablation` and the budget call for but are missing.
    """

    QUICK = dict(
        num_pool_problems=4,
        num_validation_problems=2,
        num_test_problems=2,
        num_generations=4,
        max_completion_length=48,
        num_samples=2,
        num_validation_samples=1,
        grpo_max_steps=2,
        grpo_eval_every=1,
        max_problems=4,
        output_dir="runs/compare-quick",
    )

    model_name_or_path: str = field(
        default="default", metadata={"help": "'default' (the embedded 0.5B) or a local model folder."}
    )
    dataset_name: str = field(
        default="svamp",
        metadata={"help": "Packaged task, or local dataset with prompt and solution columns (split three ways)."},
    )
    reward_func: str = field(
        default="math_accuracy_reward",
        metadata={"help": "The reward both methods train with and evaluation grades with: a name or dotted path."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [42], metadata={"help": "Training seeds (the first also seeds evaluation sampling)."}
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the pool / validation / test split."})
    gate_ablation: bool = field(default=False, metadata={"help": "Also train ReasonMaxxer with random and all gates."})
    output_dir: str = field(
        default="runs/compare", metadata={"help": "Where the evidence, plots, adapters and rollout caches go."}
    )
    pieces_dir: str | None = field(
        default=None, metadata={"help": "Folder of the finished (method, seed) pieces; unset: <output_dir>/pieces."}
    )
    methods: list[str] | None = field(
        default=None,
        metadata={"help": "Run only these methods (e.g. reasonmaxxer grpo_equal); unset: all. Base runs if missing."},
    )
    aggregate_only: bool = field(
        default=False, metadata={"help": "Run nothing: rebuild evidence.json, table and plots from the pieces."}
    )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser((CompareScriptArguments, CompareConfig), prog=prog, description=__doc__.split("\n\n")[0])


def main(script_args: CompareScriptArguments, budget: CompareConfig) -> dict:
    from ..benchmarking.compare import aggregate, run_comparison
    from ..benchmarking.pieces import piece_name, plan_pieces
    from ..rewards import resolve_reward_func

    label = "quick smoke run" if script_args.quick else "default"
    if script_args.aggregate_only:
        plan = plan_pieces(budget.grpo_compute_multiples, script_args.seeds, script_args.gate_ablation)
        pieces_dir = script_args.pieces_dir or os.path.join(script_args.output_dir, "pieces")
        return aggregate(script_args.output_dir, pieces_dir, [piece_name(m, s) for m, s in plan], label)
    return run_comparison(
        script_args.output_dir,
        script_args.model_name_or_path,
        script_args.dataset_name,
        budget,
        script_args.seeds,
        script_args.gate_ablation,
        resolve_reward_func(script_args.reward_func),
        script_args.split_seed,
        label,
        methods=script_args.methods,
        pieces_dir=script_args.pieces_dir,
    )


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
