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
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..evaluation import mean_and_stderr
from .ledger import COMPUTE_UNITS


# ---------------------------------------------------------------------------------------------------------
# Pure logic: splits, curves, the headline ratio, aggregation over seeds


def split_indices(num_rows: int, sizes: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    """Disjoint index lists of the requested ``sizes`` (name → count), drawn from a seeded permutation of
    ``range(num_rows)``; each list is sorted."""
    need = sum(sizes.values())
    if any(n < 1 for n in sizes.values()) or need > num_rows:
        raise ValueError(
            f"Cannot split {num_rows} problems into {sizes}: every part needs at least 1 problem and together at "
            f"most {num_rows}. Lower the sizes or use a larger dataset."
        )
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = sorted(order[start : start + n])
        start += n
    return out


def first_crossing(curve: Sequence[tuple[float, float]], target: float, interpolate: bool = True) -> float | None:
    """Compute at which a ``(compute, gain)`` curve first reaches ``target``, or None if it never does.

    With ``interpolate``, linear interpolation between the last point below the target and the first point at or
    above it (an estimate: the gain between evaluations is unknown); without, that first point (an upper bound).
    """
    computes = [c for c, _ in curve]
    if any(b < a for a, b in zip(computes, computes[1:])):
        raise ValueError(f"The curve must be sorted by compute; got computes {computes}.")
    previous = None
    for c, g in curve:
        if g >= target:
            if previous is None or not interpolate:
                return c
            c0, g0 = previous
            return c0 + (target - g0) * (c - c0) / (g - g0)
        previous = (c, g)
    return None


def headline_ratio(grpo_curve: Sequence[tuple[float, float]], rm_gain: float, rm_compute: float, unit: str) -> dict:
    """GRPO compute to reach ReasonMaxxer's gain ÷ ReasonMaxxer compute.

    ``grpo_curve``: ``(compute, gain over base)`` points, starting with ``(0, 0)`` for the base model. Returns
    ``reached`` (None when ReasonMaxxer did not improve, so there is no gain to reach), the interpolated and the
    checkpoint crossing, ``ratio`` (interpolated), ``budget`` (GRPO's last compute), ``ratio_lower_bound`` when
    GRPO never reached it (budget ÷ ReasonMaxxer compute) and a one-line ``text``.
    """
    if rm_compute <= 0:
        raise ValueError(f"ReasonMaxxer's compute must be positive, got {rm_compute} {unit}.")
    if not grpo_curve:
        raise ValueError("The GRPO curve is empty: evaluate at least the base model and one checkpoint.")
    budget = grpo_curve[-1][0]
    out = {
        "unit": unit,
        "target_gain": rm_gain,
        "rm_compute": rm_compute,
        "grpo_budget": budget,
        "ratio": None,
        "grpo_compute": None,
        "grpo_compute_checkpoint": None,
        "ratio_lower_bound": None,
    }
    if rm_gain <= 0:
        out["reached"] = None
        out["text"] = (
            f"ReasonMaxxer did not improve on the base model (validation gain {rm_gain:+.3f}): no gain to reach, "
            "no ratio."
        )
        return out
    crossing = first_crossing(grpo_curve, rm_gain)
    if crossing is None:
        out["reached"] = False
        out["ratio_lower_bound"] = budget / rm_compute
        out["text"] = (
            f"GRPO never reached ReasonMaxxer's validation gain ({rm_gain:+.3f}) within budget B = {budget:.4g} "
            f"{unit}: ratio > {budget / rm_compute:.3g}."
        )
        return out
    checkpoint = first_crossing(grpo_curve, rm_gain, interpolate=False)
    out |= {
        "reached": True,
        "grpo_compute": crossing,
        "grpo_compute_checkpoint": checkpoint,
        "ratio": crossing / rm_compute,
    }
    out["text"] = (
        f"GRPO reached ReasonMaxxer's validation gain ({rm_gain:+.3f}) after {crossing:.4g} {unit} (interpolated; "
        f"first checkpoint at or above it: {checkpoint:.4g}); ReasonMaxxer used {rm_compute:.4g}: "
        f"ratio {crossing / rm_compute:.3g}."
    )
    return out


def mean_curve(curves: Sequence[Sequence[dict]], unit: str) -> list[tuple[float, float]]:
    """Seed-averaged ``(compute, gain)`` from per-seed curves of ``{"step", "compute": {unit: ...}, "gain"}``
    points, over the steps every seed evaluated."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve.")
    steps = sorted(set.intersection(*({p["step"] for p in c} for c in curves)))
    by_step = [{p["step"]: p for p in c} for c in curves]
    return [
        (sum(c[s]["compute"][unit] for c in by_step) / len(by_step), sum(c[s]["gain"] for c in by_step) / len(by_step))
        for s in steps
    ]


def pooled_metric(results: Sequence[dict], metric: str = "pass@1") -> tuple[float, float]:
    """Mean and stderr over problems of ``metric`` averaged over seeds (the problem is the unit of variance).

    ``results`` are :func:`~.evaluation.evaluate` outputs on the same problems; ``metric`` is ``pass@1`` (each
    problem's fraction of correct samples) or ``greedy_accuracy``.
    """
    per_problem: dict[str, list[float]] = {}
    for result in results:
        for r in result["records"]:
            if metric == "pass@1":
                value = r["num_correct"] / len(r["correct"])
            elif metric == "greedy_accuracy":
                value = float(r["greedy_correct"])
            else:
                raise ValueError(f"pooled_metric supports pass@1 and greedy_accuracy, not {metric!r}.")
            per_problem.setdefault(r["id"], []).append(value)
    return mean_and_stderr(sum(v) / len(v) for v in per_problem.values())


def eval_generated_tokens(summary: dict) -> int:
    """Tokens an :func:`~.evaluation.evaluate` call generated (sampled and greedy), from its summary."""
    n = summary["num_problems"]
    tokens = summary.get("mean_completion_tokens", 0.0) * n * summary["num_samples"]
    tokens += summary.get("greedy_mean_completion_tokens", 0.0) * n
    return round(tokens)


def mean_ledger(ledgers: Sequence[dict]) -> dict:
    """Seed-averaged seconds per phase, compute, token totals and the largest peak memory."""
    n = len(ledgers)
    first = ledgers[0]
    return {
        "seconds": {p: sum(lg["seconds"][p] for lg in ledgers) / n for p in first["seconds"]},
        "compute_wall_s": sum(lg["compute_wall_s"] for lg in ledgers) / n,
        "compute_tokens": sum(lg["compute_tokens"] for lg in ledgers) / n,
        "token_totals": {k: sum(lg["token_totals"][k] for lg in ledgers) / n for k in first["token_totals"]},
        "peak_memory_bytes": max((lg["peak_memory_bytes"] or 0) for lg in ledgers),
        "peak_memory_kind": first["peak_memory_kind"],
        "device": first["device"],
    }


def format_table(report: dict) -> str:
    """The comparison as a plain-text table: held-out pass@1 and greedy, cost, and the headline."""
    c, s = report["config"], report["summary"]
    k = c["budget"]["eval_samples"]
    lines = [
        f"GRPO vs ReasonMaxxer: {c['model']} on {c['task']}; pool {c['sizes']['pool']} / validation "
        f"{c['sizes']['validation']} / held-out test {c['sizes']['test']} problems; {len(c['seeds'])} seed(s) "
        f"{c['seeds']}; {c['device']}",
        f"{'method':<26}{'test pass@1 (k=' + str(k) + ')':>20}{'greedy':>16}{'compute s':>11}{'gen tok':>9}"
        f"{'fwd tok':>9}{'bwd tok':>9}{'peak GB':>9}",
    ]
    for name, row in s["methods"].items():
        ledger = row.get("ledger")
        cost = (
            f"{ledger['compute_wall_s']:>11.0f}{ledger['token_totals']['generated']:>9.0f}"
            f"{ledger['token_totals']['forwarded']:>9.0f}{ledger['token_totals']['backpropagated']:>9.0f}"
            f"{(ledger['peak_memory_bytes'] or 0) / 1e9:>9.2f}"
            if ledger
            else f"{'—':>11}{'—':>9}{'—':>9}{'—':>9}{'—':>9}"
        )
        greedy = f"{row['greedy'][0]:.3f} ± {row['greedy'][1]:.3f}" if row.get("greedy") else "—"
        lines.append(f"{name:<26}{row['pass@1'][0]:>12.3f} ± {row['pass@1'][1]:.3f}{greedy:>16}{cost}")
    for unit, headline in s["headline"].items():
        lines.append(f"headline ({unit}): {headline['text']}")
    return "\n".join(lines)


def plot_curve(
    curves: dict[str, list[tuple[float, float]]], points: dict[str, tuple[float, float]], path: str, unit: str
) -> str:
    """Validation gain vs compute: a line per curve (GRPO), a marker per single point (ReasonMaxxer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot([x for x, _ in curve], [y for _, y in curve], marker="o", label=name)
    for name, (x, y) in points.items():
        ax.scatter([x], [y], marker="*", s=160, zorder=3, label=name)
        ax.axhline(y, linestyle=":", color="grey", linewidth=1)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("compute (seconds)" if unit == "wall_s" else "compute (token units: gen + fwd + 2·bwd)")
    ax.set_ylabel("validation pass@1 gain over base")
    ax.legend()
    ax.set_title("Accuracy vs compute (validation set)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class CompareBudget:
    """How much the comparison does. The default (one seed) took ≈ 54 minutes on a 2-core CPU with the 0.5B default
    model, 78 with ``--gate-ablation`` (docs/benchmarks.md); its 6-problem validation set is too small for a
    headline ratio, so raise ``val_problems`` where compute allows. ``quick`` is a smoke run, not a measurement.

    > Data
    pool_problems / val_problems / test_problems: training pool (both methods), validation set (GRPO checkpoint
        curve, ReasonMaxxer's gain for the headline), held-out test set (final numbers only).

    > Shared by both methods
    num_generations: rollouts per prompt (GRPO's group size, ReasonMaxxer's offline samples).
    max_new_tokens: completion budget for rollouts and evaluation. learning_rate: AdamW, for both LoRAs.
    prompt_style: "brief" (short reasoning; what a CPU can afford with the 0.5B default) or "paper" (tasks.py).

    > Evaluation (same protocol for every model; T=0.6, top-p 0.95)
    eval_samples: samples per test problem (pass@1 is unbiased from them), plus one greedy completion.
    val_samples: samples per validation problem (no greedy).

    > GRPO
    grpo_max_steps: optimiser steps (its budget B). grpo_eval_every: validation evaluation every N steps.
    grpo_prompts_per_step: prompts per step (each with num_generations completions).

    > ReasonMaxxer
    max_problems: mixed-success problems kept.
    """

    pool_problems: int = 8
    val_problems: int = 6
    test_problems: int = 12
    num_generations: int = 6
    max_new_tokens: int = 224  # 160 truncated 79% of the 0.5B default's SVAMP rollouts (docs/benchmarks.md)
    learning_rate: float = 2e-4
    eval_samples: int = 2
    val_samples: int = 2
    grpo_max_steps: int = 4
    grpo_eval_every: int = 2
    grpo_prompts_per_step: int = 1
    max_problems: int = 8
    prompt_style: str = "brief"

    @classmethod
    def quick(cls) -> CompareBudget:
        return cls(
            pool_problems=4,
            val_problems=2,
            test_problems=2,
            num_generations=4,
            max_new_tokens=48,
            eval_samples=2,
            val_samples=1,
            grpo_max_steps=2,
            grpo_eval_every=1,
            max_problems=4,
        )


def load_splits(task: str, dataset: str | None, budget: CompareBudget, split_seed: int) -> dict:
    """``{"pool", "validation", "test"}`` datasets with ``prompt`` and ``solution`` columns, pairwise disjoint.

    A packaged ``task``: pool and validation come from its train split, test from its test split. A local
    ``dataset`` (a JSON/JSONL file with ``prompt`` and ``solution`` columns): all three from its rows.
    """
    from datasets import Dataset

    from ..tasks import load_task

    if dataset is not None:
        data = Dataset.from_json(dataset)
        missing = {"prompt", "solution"} - set(data.column_names)
        if missing:
            raise ValueError(f"{dataset} lacks the columns {sorted(missing)}: give every row a prompt and a solution.")
        if "id" not in data.column_names:
            data = data.add_column("id", [f"{os.path.basename(dataset)}/{i}" for i in range(len(data))])
        sizes = {"pool": budget.pool_problems, "validation": budget.val_problems, "test": budget.test_problems}
        return {name: data.select(idx) for name, idx in split_indices(len(data), sizes, split_seed).items()}
    train = load_task(task, "train", prompt_style=budget.prompt_style)
    parts = split_indices(len(train), {"pool": budget.pool_problems, "validation": budget.val_problems}, split_seed)
    return {
        "pool": train.select(parts["pool"]),
        "validation": train.select(parts["validation"]),
        "test": load_task(
            task, "test", num_problems=budget.test_problems, seed=split_seed, prompt_style=budget.prompt_style
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
        samples, greedy = (b.eval_samples, True) if split == "test" else (b.val_samples, False)
        run = lambda: evaluate(
            model,
            tokenizer,
            self.splits[split],
            num_samples=samples,
            greedy=greedy,
            max_new_tokens=b.max_new_tokens,
            seed=self.eval_seed,
            batch_size=32,
            reward_fn=self.reward_fn,
            desc=desc,
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
            max_completion_length=b.max_new_tokens,
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

        b, runner = self.budget, self
        model, tokenizer = self.load()
        ledger = self.new_ledger("grpo", model)
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
        _free(trainer, model)
        return {"test": test, "validation_curve": curve, "ledger": ledger.to_dict()}

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
            trainer,
            "_generate",
            "generation",
            count_generated=lambda groups: sum(len(c["completion_ids"]) for g in groups for c in g),
        )
        with ledger.phase("scoring"):
            trainer.train_dataset = trainer.prepare_training_data()
        with ledger.phase("training"):
            trainer.train()
        out = {"pool": trainer.pool_stats}
        if with_validation:
            out["validation"] = self.evaluate(trainer.model, tokenizer, "validation", "ReasonMaxxer (val)", ledger)
        out["test"] = self.evaluate(trainer.model, tokenizer, "test", f"ReasonMaxxer {gate} (test)", ledger)
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
    task: str = "svamp",
    dataset: str | None = None,
    budget: CompareBudget | None = None,
    seeds: Sequence[int] = (0,),
    gate_ablation: bool = False,
    reward_fn: Callable | None = None,
    split_seed: int = 0,
    label: str = "default",
) -> dict:
    """Run the whole comparison, print the table, write ``compare.json``, ``compare_pass1.png`` and
    ``compare_curve.png`` (and ``compare_curve_tokens.png``) under ``output_dir``; return the report."""
    from ..evaluation import plot_comparison
    from ..models import DEFAULT_MODEL, resolve_model
    from ..rewards import math_accuracy_reward
    from .ledger import CostLedger, device_name

    budget = budget or CompareBudget()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("Give at least one seed (--seeds 0).")
    reward_fn = reward_fn or math_accuracy_reward
    os.makedirs(output_dir, exist_ok=True)
    splits = load_splits(task, dataset, budget, split_seed)
    runner = _Runner(resolve_model(model), splits, budget, reward_fn, output_dir, seeds[0], COMPUTE_UNITS[0])

    base_model, tokenizer = runner.load()
    base_ledger = CostLedger("base", device=device_name())
    base = {
        "test": runner.evaluate(base_model, tokenizer, "test", "Base (test)", base_ledger),
        "validation": runner.evaluate(base_model, tokenizer, "validation", "Base (val)", base_ledger),
        "ledger": base_ledger.to_dict(),
    }
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
        _save_json(_report(budget, model, task, dataset, seeds, splits, base, runs, gate_ablation, label), output_dir)

    report = _report(budget, model, task, dataset, seeds, splits, base, runs, gate_ablation, label)
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


PARTIAL_JSON = "compare.partial.json"  # raw results so far, rewritten after every method; gone once the report is


def _method_paths(gate_ablation: bool) -> list[tuple[str, tuple[str, ...]]]:
    paths = [("GRPO", ("grpo",)), ("ReasonMaxxer", ("reasonmaxxer",))]
    if gate_ablation:
        paths += [(f"ReasonMaxxer gate={g}", ("gate_ablation", g)) for g in ("random", "all")]
    return paths


def _collect(runs: list[dict], path: tuple[str, ...], key: str) -> list[dict]:
    """``key`` ("test" or "ledger") of the method at ``path`` in every seed's run."""
    out = []
    for run in runs:
        node = run
        for step in path:
            node = node[step]
        out.append(node[key])
    return out


def _report(budget, model, task, dataset, seeds, splits, base, runs, gate_ablation, label) -> dict:
    """The JSON report: configuration, splits, every run, and the seed-pooled summary with the headline."""
    methods = {
        "base": {"pass@1": pooled_metric([base["test"]]), "greedy": pooled_metric([base["test"]], "greedy_accuracy")}
    }
    for name, path in _method_paths(gate_ablation):
        tests = _collect(runs, path, "test")
        methods[name] = {
            "pass@1": pooled_metric(tests),
            "greedy": pooled_metric(tests, "greedy_accuracy"),
            "ledger": mean_ledger(_collect(runs, path, "ledger")),
        }
    base_val = base["validation"]["summary"]["pass@1"]
    rm_gain = sum(r["reasonmaxxer"]["validation"]["summary"]["pass@1"] for r in runs) / len(runs) - base_val
    rm_compute = {u: sum(r["reasonmaxxer"]["ledger"][f"compute_{u}"] for r in runs) / len(runs) for u in COMPUTE_UNITS}
    headline = {
        u: headline_ratio(mean_curve([r["grpo"]["validation_curve"] for r in runs], u), rm_gain, rm_compute[u], u)
        for u in COMPUTE_UNITS
    }
    return {
        "config": {
            "label": label,
            "model": model,
            "task": task if dataset is None else dataset,
            "seeds": seeds,
            "budget": asdict(budget),
            "device": runs[0]["grpo"]["ledger"]["device"],
            "sizes": {k: len(v) for k, v in splits.items()},
            "gate_ablation": gate_ablation,
            "eval_protocol": {
                "temperature": 0.6,
                "top_p": 0.95,
                "test_samples": budget.eval_samples,
                "greedy": True,
                "validation_samples": budget.val_samples,
            },
        },
        "splits": {k: list(v["id"]) for k, v in splits.items()},
        "summary": {
            "methods": methods,
            "headline": headline,
            "reasonmaxxer_validation": {"gain": rm_gain, "compute": rm_compute},
            "base_validation_pass@1": base_val,
        },
        "base": base,
        "runs": runs,
    }


def _save_json(report: dict, output_dir: str, name: str = "compare.json") -> str:
    path = os.path.join(output_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)
    return path
