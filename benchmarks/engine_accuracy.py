"""Accuracy under the llama.cpp engine vs float32 ``generate``: the same problems, the same protocol, paired.

The engine samples from the Q4 GGUF with activations quantized inside its dot products; this checks that the
base model's accuracy it reports is within noise of float32 ``generate`` (issue 11's fidelity target), problem by
problem: greedy accuracy of each engine, their paired difference with a bootstrap 95% CI, and how often the two
greedy answers agree.

    python benchmarks/engine_accuracy.py                          # 100 SVAMP test problems, greedy, 320 tokens
    python benchmarks/engine_accuracy.py --num-problems 8 --max-new-tokens 64     # a quick look

Writes ``docs/results/engine_accuracy.json``. Run it on a quiet machine if the wall times matter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.evaluation import evaluate, load_model_for_eval
from trl_reasonmaxxer.stats import describe, paired_difference, per_problem_scores
from trl_reasonmaxxer.tasks import load_prompts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder")
    parser.add_argument("--task", default="svamp")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-problems", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--prompt-style", default="brief")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="docs/results/engine_accuracy.json")
    return parser.parse_args(argv)


def agreement(a: dict, b: dict) -> float:
    """Share of problems whose greedy answers (as extracted) are the same under both engines."""
    answers_a = {r["id"]: r.get("greedy_answer") for r in a["records"]}
    same = [answers_a[r["id"]] == r.get("greedy_answer") for r in b["records"] if r["id"] in answers_a]
    return sum(same) / len(same)


def main(argv=None) -> dict:
    ns = parse_args(argv)
    load_start = os.getloadavg()
    model, tokenizer = load_model_for_eval(resolve_model(ns.model))
    data = load_prompts(ns.task, ns.split, ns.num_problems, seed=ns.seed, prompt_style=ns.prompt_style)
    results = {}
    for name, use_llama_cpp in (("hf-fp32", False), ("llama.cpp", True)):
        results[name] = evaluate(
            model,
            tokenizer,
            data,
            num_samples=0,
            greedy=True,
            max_new_tokens=ns.max_new_tokens,
            seed=ns.seed,
            batch_size=32,
            desc=name,
            use_llama_cpp=use_llama_cpp,
        )
    diff = paired_difference(
        per_problem_scores(results["llama.cpp"], "greedy"), per_problem_scores(results["hf-fp32"], "greedy")
    )
    summary = {name: r["summary"] for name, r in results.items()}
    report = {
        "task": ns.task,
        "split": ns.split,
        "num_problems": len(data),
        "max_new_tokens": ns.max_new_tokens,
        "prompt_style": ns.prompt_style,
        "greedy_accuracy": {name: s["greedy_accuracy"] for name, s in summary.items()},
        "greedy_truncation_rate": {name: s.get("greedy_truncation_rate") for name, s in summary.items()},
        "wall_time_s": {name: s["wall_time_s"] for name, s in summary.items()},
        "paired_llama_minus_hf": diff,
        "greedy_answer_agreement": agreement(results["hf-fp32"], results["llama.cpp"]),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    print(f"{'engine':<12}{'greedy acc':>12}{'truncated':>11}{'wall s':>9}")
    for name in results:
        trunc = report["greedy_truncation_rate"][name]
        print(
            f"{name:<12}{report['greedy_accuracy'][name]:>12.3f}{(trunc or 0):>11.2f}{report['wall_time_s'][name]:>9.0f}"
        )
    print(describe(diff, "llama.cpp - hf-fp32 (greedy)"))
    print(f"greedy answers agree on {report['greedy_answer_agreement']:.1%} of problems")
    os.makedirs(os.path.dirname(ns.out) or ".", exist_ok=True)
    with open(ns.out, "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
