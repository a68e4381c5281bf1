"""Token-level divergence and interventions of a teacher against the base model (the paper's §3 evidence).

```bash
trl-reasonmaxxer analyze --adapter runs/compare/seed42/grpo/adapter            # base + adapter as the teacher
trl-reasonmaxxer analyze --model_name_or_path path/to/base --teacher path/to/rl-model --dataset_name math500
trl-reasonmaxxer analyze --config examples/recipes/analyze.yaml --quick
```

Arguments come from two dataclasses: [`AnalyzeScriptArguments`] (models, data, output) and
[`~trl_reasonmaxxer.analysis.AnalysisConfig`] (decoding, interventions, τ calibration). See docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis.report import AnalysisConfig
from ..tasks import PROMPT_TEMPLATES
from .parser import QuickArguments, ScriptParser


@dataclass
class AnalyzeScriptArguments(QuickArguments):
    """
    Models, data and output of ``trl-reasonmaxxer analyze``; give exactly one of `adapter` and `teacher`.

    Parameters:
        model_name_or_path (`str`, *optional*, defaults to `"default"`):
            The base model: `"default"` (the embedded Qwen2.5-Coder-0.5B-Instruct) or a local model folder.
        adapter (`str`, *optional*):
            A PEFT adapter folder: the teacher is the base model with this adapter.
        teacher (`str`, *optional*):
            A teacher model folder sharing the base model's tokenizer.
        dataset_name (`str`, *optional*, defaults to `"svamp"`):
            A packaged task, or a local dataset (folder or json/jsonl/parquet/csv file) with `prompt` and `solution`
            columns.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            The split analysed.
        prompt_style (`str`, *optional*, defaults to `"brief"`):
            Use the prompts the teacher was trained on (demo and compare use `"brief"`).
        num_problems (`int`, *optional*, defaults to `32`):
            A seeded subset of this many problems; 0: the whole split.
        pool (`str`, *optional*):
            A saved rollout pool (`.../rollouts/<key>/pool`): the τ curve is then computed on its completions.
        output_dir (`str`, *optional*, defaults to `"runs/analysis"`):
            Where `analysis.json`, `analysis.txt` and the plots go.
    """

    # a smoke run of every step on the real model in minutes; the default is a small measurement (docs/analysis.md)
    QUICK = dict(num_problems=4, max_completion_length=160, batch_size=4)

    model_name_or_path: str = field(
        default="default", metadata={"help": "Base model: 'default' (the embedded 0.5B) or a local model folder."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "PEFT adapter folder: the teacher is the base model with this adapter."}
    )
    teacher: str | None = field(
        default=None, metadata={"help": "A teacher model folder sharing the base model's tokenizer."}
    )
    dataset_name: str = field(
        default="svamp", metadata={"help": "Packaged task, or local dataset with prompt and solution columns."}
    )
    dataset_test_split: str = field(default="test", metadata={"help": "The split analysed."})
    prompt_style: str = field(
        default="brief",
        metadata={
            "help": "Use the prompts the teacher was trained on (demo and compare use brief).",
            "choices": list(PROMPT_TEMPLATES),
        },
    )
    num_problems: int = field(default=32, metadata={"help": "A seeded subset of this many problems; 0: all."})
    pool: str | None = field(
        default=None, metadata={"help": "Saved rollout pool (.../rollouts/<key>/pool) for the τ curve."}
    )
    output_dir: str = field(default="runs/analysis", metadata={"help": "Where the report and plots go."})

    def __post_init__(self):
        if (self.adapter is None) == (self.teacher is None):
            raise ValueError(
                "Give the teacher in one way: --adapter ADAPTER_DIR (base model + adapter) or --teacher MODEL_DIR."
            )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser((AnalyzeScriptArguments, AnalysisConfig), prog=prog, description=__doc__.split("\n\n")[0])


def main(script_args: AnalyzeScriptArguments, config: AnalysisConfig) -> dict:
    """Decode, compare and intervene; print the table and write the report."""
    from contextlib import nullcontext

    from trl.trainer.utils import use_adapter

    from ..analysis import AdapterDisabled, format_table, run_analysis, save_report
    from ..default_model import resolve_model
    from ..evaluation import load_model_for_eval
    from ..tasks import load_prompts

    args = script_args
    data = load_prompts(
        args.dataset_name,
        args.dataset_test_split,
        args.num_problems or None,
        seed=config.seed,
        prompt_style=args.prompt_style,
    )
    if args.adapter:  # one PeftModel: the teacher with its adapter on, the base with it off
        teacher, tokenizer = load_model_for_eval(resolve_model(args.model_name_or_path), args.adapter)
        base = AdapterDisabled(teacher)
    else:
        base, tokenizer = load_model_for_eval(resolve_model(args.model_name_or_path))
        teacher, _ = load_model_for_eval(resolve_model(args.teacher))
    pool_entropies = None
    if args.pool:
        from datasets import load_from_disk

        from ..scoring import score_rollouts

        pool = load_from_disk(args.pool)
        sequences = list(zip(pool["prompt_ids"], pool["completion_ids"]))
        scorer = teacher if args.adapter else base
        with use_adapter(teacher, None) if args.adapter else nullcontext():  # entropy of the base model
            scored = score_rollouts(scorer, sequences, tokenizer.pad_token_id, desc="Scoring pool")
        pool_entropies = [entropy for entropy, _ in scored]
    report = run_analysis(base, teacher, tokenizer, data, config, pool_entropies)
    report = {
        "model": args.model_name_or_path,
        "teacher": args.adapter or args.teacher,
        "task": args.dataset_name,
        "split": args.dataset_test_split,
        "label": "quick smoke run" if args.quick else "default",
        "pool": args.pool,
    } | report
    paths = save_report(report, args.output_dir)
    print(format_table(report))
    print(f"wrote {', '.join(paths.values())}")
    return report


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
