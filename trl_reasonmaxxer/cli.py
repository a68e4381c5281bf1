"""``trl-reasonmaxxer {demo, eval, train}``."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _demo(ns: argparse.Namespace) -> None:
    from .demo import DemoBudget, run_demo

    budget = DemoBudget.quick() if ns.quick else DemoBudget()
    for field in ("train_problems", "test_problems", "num_generations", "eval_samples", "max_new_tokens", "max_problems"):
        if getattr(ns, field) is not None:
            setattr(budget, field, getattr(ns, field))
    output_dir = ns.output_dir or ("runs/demo-quick" if ns.quick else "runs/demo")
    run_demo(output_dir, ns.model, ns.task, budget, ns.seed, label="quick smoke run" if ns.quick else "default")


def _eval(ns: argparse.Namespace) -> None:
    from .evaluation import evaluate, load_model_for_eval, plot_comparison, save_results
    from .models import resolve_model
    from .tasks import load_task

    data = load_task(ns.task, ns.split, num_problems=ns.num_problems, seed=ns.seed)
    results = {}
    for adapter in [None, *ns.adapter]:
        model, tokenizer = load_model_for_eval(resolve_model(ns.model), adapter)
        name = adapter or "base"
        results[name] = evaluate(model, tokenizer, data, num_samples=ns.num_samples, max_new_tokens=ns.max_new_tokens,
                                 greedy=not ns.no_greedy, seed=ns.seed, desc=name)  # fmt: skip
        s = results[name]["summary"]
        print(f"{name}: pass@1 {s['pass@1']:.3f} ± {s['pass@1_stderr']:.3f}" if "pass@1" in s else name, flush=True)
    os.makedirs(ns.output_dir, exist_ok=True)
    save_results(results, os.path.join(ns.output_dir, "eval.json"))
    if len(results) > 1 and ns.num_samples:
        plot_comparison(results, os.path.join(ns.output_dir, "eval.png"))


def _train(argv: list[str]) -> None:
    from .train import run

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
    for field in ("train_problems", "test_problems", "num_generations", "eval_samples", "max_new_tokens", "max_problems"):
        demo.add_argument(f"--{field.replace('_', '-')}", type=int, default=None)
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
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output-dir", default="runs/eval")
    ev.set_defaults(func=_eval)

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
