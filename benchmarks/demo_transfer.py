"""Does the demo's adapter cost accuracy off its training task? GSM8K (never trained on), before and after.

Trains the adapter ``make demo`` trains (``DemoConfig``'s defaults: 12 SVAMP train problems × 8 rollouts, 6 kept,
320 tokens), once per learning rate asked, then evaluates the base model and each adapter on the same GSM8K test
problems (the demo's brief prompt unless ``--prompt-style`` says otherwise; greedy, plus samples at T=0.6 when
``--num-samples`` > 0; the engine of ``evaluate``'s auto choice), each adapter paired with the base per problem
(bootstrap 95% CI).

    python benchmarks/demo_transfer.py                                 # the demo's lr 1e-4, 200 GSM8K problems
    python benchmarks/demo_transfer.py --learning-rates 1e-4 2e-4      # and the old demo's 2e-4
    python benchmarks/demo_transfer.py --prompt-style paper --out docs/results/demo_transfer_paper.json
                                       # the same adapters under the paper's \\boxed{} prompt they were not trained on

Resumable: every adapter and evaluation is kept under ``--workdir`` and reused when the script runs again with the
same settings. Writes ``docs/results/demo_transfer.json`` after each model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.benchmarking.pieces import git_commit
from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.evaluation import cached_result, evaluate, load_model_for_eval
from trl_reasonmaxxer.scripts.demo import DemoConfig, demo_trainer, train_demo_adapter
from trl_reasonmaxxer.stats import describe, paired_differences
from trl_reasonmaxxer.tasks import load_prompts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder")
    parser.add_argument(
        "--quick", action="store_true", help="the demo's --quick budget: a smoke run, not a measurement"
    )
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[DemoConfig.learning_rate])
    parser.add_argument("--task", default="gsm8k", help="the transfer task (its test split)")
    parser.add_argument("--num-problems", type=int, default=200)
    parser.add_argument(
        "--prompt-style",
        default=None,
        help="the evaluation's prompt (paper, brief); default: the one the demo trains on",
    )
    parser.add_argument("--num-samples", type=int, default=0, help="samples per problem besides the greedy one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the transfer subset and of sampling")
    parser.add_argument("--workdir", default="runs/demo-transfer")
    parser.add_argument("--out", default="docs/results/demo_transfer.json")
    return parser.parse_args(argv)


def train_adapter(budget: DemoConfig, model_path: str) -> dict:
    """The demo's offline phase and training at ``budget``; the adapter path, pool statistics and wall times."""
    model, tokenizer = load_model_for_eval(model_path)
    train = load_prompts(
        budget.dataset_name, "train", budget.num_train_problems, seed=budget.seed, prompt_style=budget.prompt_style
    )
    trainer, times = demo_trainer(budget, model, tokenizer, train), {}
    adapter = train_demo_adapter(trainer, budget.output_dir, times)
    return {
        "adapter": adapter,
        "pool": trainer.pool_stats,
        "steps": trainer.state.global_step,
        "offline_s": times["offline_phase"],
        "training_s": times["training"],
    }


def main(argv=None) -> dict:
    ns = parse_args(argv)
    start_load, start = list(os.getloadavg()), time.perf_counter()
    model_path = resolve_model(ns.model)
    demo = DemoConfig(model_name_or_path=ns.model, **(DemoConfig.QUICK if ns.quick else {}))
    prompt_style = ns.prompt_style or demo.prompt_style
    data = load_prompts(ns.task, "test", ns.num_problems, seed=ns.seed, prompt_style=prompt_style)
    protocol = dict(
        num_samples=ns.num_samples,
        greedy=True,
        max_new_tokens=demo.max_completion_length,
        seed=ns.seed,
        batch_size=32,
    )
    key = {"task": ns.task, "prompt_style": prompt_style, "problems": list(data["id"]), **protocol}

    def evaluated(adapter: str | None, name: str) -> dict:
        def run():
            model, tokenizer = load_model_for_eval(model_path, adapter)
            return evaluate(model, tokenizer, data, desc=f"{name} on {ns.task}", **protocol)

        path = os.path.join(ns.workdir, f"eval-{name}-{prompt_style}.json")
        return cached_result(path, key | {"adapter": adapter}, run)

    report = {
        "model": ns.model,
        "quick": ns.quick,
        "task": ns.task,
        "prompt_style": prompt_style,
        "n_problems": len(data),
        "protocol": protocol,
        "demo": {},
        "commit": git_commit(),
    }
    base = evaluated(None, "base")
    report["base"] = base["summary"]
    for lr in ns.learning_rates:
        name = f"lr{lr:g}"
        budget = replace(demo, learning_rate=lr, output_dir=os.path.join(ns.workdir, name))
        trained = cached_result(
            os.path.join(budget.output_dir, "trained.json"),
            asdict(budget),
            lambda b=budget: train_adapter(b, model_path),
        )
        tuned = evaluated(trained["adapter"], name)
        paired = paired_differences(tuned, base)
        report["demo"][name] = {
            "learning_rate": lr,
            "training": trained,
            "summary": tuned["summary"],
            "paired": paired,
        }
        report |= {
            "load_average": {"start": start_load, "end": list(os.getloadavg())},
            "wall_s": time.perf_counter() - start,
        }
        with open(ns.out, "w") as f:
            json.dump(report, f, indent=2)
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    lines = [
        f"The demo's adapter on {report['task']} ({report['n_problems']} test problems, never trained on; "
        f"{report['prompt_style']} prompt), "
        f"paired with the base model per problem",
        f"{'model':<12}{'greedy':>10}{'truncated':>11}"
        + (f"{'pass@1':>10}" if report["protocol"]["num_samples"] else ""),
    ]
    rows = {"base": report["base"]} | {name: d["summary"] for name, d in report["demo"].items()}
    for name, s in rows.items():
        sampled = f"{s['pass@1']:>10.3f}" if report["protocol"]["num_samples"] else ""
        lines.append(f"{name:<12}{s['greedy_accuracy']:>10.3f}{s['greedy_truncation_rate']:>11.2f}{sampled}")
    for name, d in report["demo"].items():
        lines += [f"  {describe(diff, f'{name} {metric} - base')}" for metric, diff in d["paired"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
