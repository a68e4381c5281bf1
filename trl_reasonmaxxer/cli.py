"""``trl-reasonmaxxer {demo, eval, train, analyze, compare}``."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
PROMPT_STYLES = ("paper", "brief")  # tasks.PROMPT_TEMPLATES, without importing datasets for --help


def _demo(ns: argparse.Namespace) -> None:
    from .scripts.demo import DemoBudget, run_demo

    budget = DemoBudget.quick() if ns.quick else DemoBudget()
    for field in (
        "train_problems",
        "test_problems",
        "num_generations",
        "eval_samples",
        "max_new_tokens",
        "max_problems",
        "prompt_style",
    ):
        if getattr(ns, field) is not None:
            setattr(budget, field, getattr(ns, field))
    output_dir = ns.output_dir or ("runs/demo-quick" if ns.quick else "runs/demo")
    run_demo(output_dir, ns.model, ns.task, budget, ns.seed, label="quick smoke run" if ns.quick else "default")


def _eval(ns: argparse.Namespace) -> None:
    from .evaluation import (
        check_adapter,
        check_model_path,
        evaluate,
        load_model_for_eval,
        plot_comparison,
        save_results,
    )
    from .models import resolve_model

    # every path is checked before the base evaluation runs, and results are written after each model
    model_path = resolve_model(ns.model)
    check_model_path(model_path)
    for adapter in ns.adapter:
        check_adapter(adapter, model_path)
    from .tasks import load_task

    data = load_task(ns.task, ns.split, num_problems=ns.num_problems, seed=ns.seed, prompt_style=ns.prompt_style)
    results = {}
    os.makedirs(ns.output_dir, exist_ok=True)
    for adapter in [None, *ns.adapter]:
        model, tokenizer = load_model_for_eval(model_path, adapter)
        name = adapter or "base"
        results[name] = evaluate(
            model,
            tokenizer,
            data,
            num_samples=ns.num_samples,
            max_new_tokens=ns.max_new_tokens,
            greedy=not ns.no_greedy,
            seed=ns.seed,
            desc=name,
        )
        s = results[name]["summary"]
        print(f"{name}: pass@1 {s['pass@1']:.3f} ± {s['pass@1_stderr']:.3f}" if "pass@1" in s else name, flush=True)
        save_results(results, os.path.join(ns.output_dir, "eval.json"))
    if len(results) > 1 and ns.num_samples:
        plot_comparison(results, os.path.join(ns.output_dir, "eval.png"))


# --quick: a smoke run of every step on the real model in minutes; the default: a small measurement (docs/analysis.md)
ANALYZE_BUDGETS = {
    "quick": dict(num_problems=4, max_new_tokens=160, batch_size=4),
    "default": dict(num_problems=32, max_new_tokens=256, batch_size=8),
}


def _analyze(ns: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from trl.trainer.utils import use_adapter

    from .analysis import AdapterDisabled, AnalysisConfig, format_table, run_analysis, save_report
    from .evaluation import load_model_for_eval
    from .models import resolve_model
    from .tasks import load_task

    for key, value in ANALYZE_BUDGETS["quick" if ns.quick else "default"].items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    data = load_task(
        ns.task, ns.split, num_problems=ns.num_problems or None, seed=ns.seed, prompt_style=ns.prompt_style
    )
    if ns.adapter:  # one PeftModel: the teacher with its adapter on, the base with it off
        teacher, tokenizer = load_model_for_eval(resolve_model(ns.model), ns.adapter)
        base = AdapterDisabled(teacher)
    else:
        base, tokenizer = load_model_for_eval(resolve_model(ns.model))
        teacher, _ = load_model_for_eval(resolve_model(ns.teacher))
    pool_entropies = None
    if ns.pool:
        from datasets import load_from_disk

        from .scoring import score_rollouts

        pool = load_from_disk(ns.pool)
        sequences = list(zip(pool["prompt_ids"], pool["completion_ids"]))
        scorer = teacher if ns.adapter else base
        with use_adapter(teacher, None) if ns.adapter else nullcontext():  # entropy of the base model
            scored = score_rollouts(scorer, sequences, tokenizer.pad_token_id, desc="Scoring pool")
        pool_entropies = [entropy for entropy, _ in scored]
    config = AnalysisConfig(
        max_new_tokens=ns.max_new_tokens,
        batch_size=ns.batch_size,
        top_k=ns.top_k,
        tau=ns.tau,
        random_top=ns.random_top,
        seed=ns.seed,
        target_fraction=ns.target_fraction,
    )
    report = run_analysis(base, teacher, tokenizer, data, config, pool_entropies)
    report = {
        "model": ns.model,
        "teacher": ns.adapter or ns.teacher,
        "task": ns.task,
        "split": ns.split,
        "label": "quick smoke run" if ns.quick else "default",
        "pool": ns.pool,
    } | report
    paths = save_report(report, ns.output_dir)
    print(format_table(report))
    print(f"wrote {', '.join(paths.values())}")


def _compare(ns: argparse.Namespace) -> None:
    from .benchmarking.compare import CompareBudget, run_comparison
    from .trainer import resolve_reward_func

    budget = CompareBudget.quick() if ns.quick else CompareBudget()
    for field in fields(CompareBudget):
        if getattr(ns, field.name) is not None:
            setattr(budget, field.name, getattr(ns, field.name))
    output_dir = ns.output_dir or ("runs/compare-quick" if ns.quick else "runs/compare")
    run_comparison(
        output_dir,
        ns.model,
        ns.task,
        ns.dataset,
        budget,
        ns.seeds,
        ns.gate_ablation,
        resolve_reward_func(ns.reward),
        ns.split_seed,
        "quick smoke run" if ns.quick else "default",
    )


def _train(argv: list[str]) -> None:
    from .scripts.train import run

    run(argv, prog="trl-reasonmaxxer train")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trl-reasonmaxxer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="Base eval, ReasonMaxxer training and adapter eval on the embedded default.")
    demo.add_argument("--quick", action="store_true", help="A smoke run in minutes (tiny budget, not a measurement).")
    demo.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder.")
    demo.add_argument("--task", default="svamp", help="svamp, gsm8k, math, ...")
    demo.add_argument("--output-dir", default=None)
    demo.add_argument("--seed", type=int, default=42)
    for field in (
        "train_problems",
        "test_problems",
        "num_generations",
        "eval_samples",
        "max_new_tokens",
        "max_problems",
    ):
        demo.add_argument(f"--{field.replace('_', '-')}", type=int, default=None)
    demo.add_argument("--prompt-style", choices=PROMPT_STYLES, default=None, help="Default: brief (short reasoning).")
    demo.set_defaults(func=_demo)

    ev = sub.add_parser("eval", help="Evaluate a model (and adapters) on a packaged math benchmark.")
    ev.add_argument("--model", default="default")
    ev.add_argument("--adapter", action="append", default=[], help="PEFT adapter folder (repeatable).")
    ev.add_argument("--task", default="svamp")
    ev.add_argument("--split", default="test")
    ev.add_argument("--num-problems", type=int, default=None)
    ev.add_argument("--num-samples", type=int, default=4)
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--no-greedy", action="store_true")
    ev.add_argument("--prompt-style", choices=PROMPT_STYLES, default="paper")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output-dir", default="runs/eval")
    ev.set_defaults(func=_eval)

    an = sub.add_parser(
        "analyze", help="Token-level divergence and interventions of a teacher against the base model."
    )
    teacher = an.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--adapter", help="PEFT adapter folder: the teacher is the base model with this adapter.")
    teacher.add_argument("--teacher", help="A teacher model folder sharing the base model's tokenizer.")
    an.add_argument("--model", default="default", help="Base model: 'default' (embedded 0.5B) or a local folder.")
    an.add_argument("--quick", action="store_true", help="A smoke run in minutes (4 problems, 160 tokens).")
    an.add_argument("--task", default="svamp")
    an.add_argument("--split", default="test")
    an.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default="brief",
        help="Use the prompts the teacher was trained on (demo and compare use brief).",
    )
    an.add_argument("--num-problems", type=int, default=None, help="Default 32 (4 with --quick); 0: the whole split.")
    an.add_argument("--max-new-tokens", type=int, default=None, help="Default 256 (160 with --quick).")
    an.add_argument("--batch-size", type=int, default=None, help="Prompts per batch; default 8 (4 with --quick).")
    an.add_argument("--tau", type=float, default=1.2, help="Entropy gate (nats) of the entropy-gated intervention.")
    an.add_argument("--top-k", type=int, default=5, help="Reranked means in the base top-k (but not top-1).")
    an.add_argument("--random-top", type=int, default=20, help="The random control draws from base ranks 2..this.")
    an.add_argument("--target-fraction", type=float, default=0.03, help="Gated share the calibrated tau aims at.")
    an.add_argument("--pool", default=None, help="Saved rollout pool (.../rollouts/<key>/pool) for the tau curve.")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--output-dir", default="runs/analysis")
    an.set_defaults(func=_analyze)

    cmp = sub.add_parser("compare", help="GRPO (TRL) vs ReasonMaxxer: same model, data, LoRA, reward and evaluation.")
    cmp.add_argument("--quick", action="store_true", help="A smoke run in minutes (tiny budget, not a measurement).")
    cmp.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder.")
    cmp.add_argument("--task", default="svamp", help="Packaged task: pool/validation from train, test from test.")
    cmp.add_argument("--dataset", default=None, help="Local JSON/JSONL with prompt and solution (replaces --task).")
    cmp.add_argument("--reward", default="math_accuracy_reward", help="Reward function name or dotted path.")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds (the table reports how many).")
    cmp.add_argument("--split-seed", type=int, default=0, help="Seed of the pool/validation/test split.")
    cmp.add_argument("--gate-ablation", action="store_true", help="Also train ReasonMaxxer with random and all gates.")
    cmp.add_argument("--output-dir", default=None)
    from .benchmarking.compare import CompareBudget

    for field in fields(CompareBudget):
        choices = PROMPT_STYLES if field.name == "prompt_style" else None
        cmp.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None, choices=choices)
    cmp.set_defaults(func=_compare)

    # `train` hands everything after it to TrlParser (its own --help, --config and dataclass flags)
    sub.add_parser("train", add_help=False, help="TRL-style training script (see `trl-reasonmaxxer train --help`).")

    ns, rest = parser.parse_known_args(argv)
    if ns.command == "train":
        return _train(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    ns.func(ns)


if __name__ == "__main__":
    main()
