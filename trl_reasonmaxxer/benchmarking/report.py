"""The comparison's arithmetic and its report, without a model: disjoint splits, the (compute, gain) curves and
their first crossing, the headline ratio, seed pooling, the JSON report, the table and the curve plot.

:mod:`.compare` runs the methods and hands their raw results here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict

from ..evaluation import mean_and_stderr
from ..plotting import new_figure, save_figure
from .ledger import COMPUTE_UNITS


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
    k = c["budget"]["num_samples"]
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
    engines = [
        f"{name} " + ", ".join(f"{phase} {engine}" for phase, engine in row["engines"].items())
        for name, row in s["methods"].items()
        if row.get("engines")
    ]
    if engines:
        lines.append("engines: " + "; ".join(engines))
    for unit, headline in s["headline"].items():
        lines.append(f"headline ({unit}): {headline['text']}")
    return "\n".join(lines)


def plot_curve(
    curves: dict[str, list[tuple[float, float]]], points: dict[str, tuple[float, float]], path: str, unit: str
) -> str:
    """Validation gain vs compute: a line per curve (GRPO), a marker per single point (ReasonMaxxer)."""
    fig, ax = new_figure()
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
    return save_figure(fig, path)


def method_paths(gate_ablation: bool) -> list[tuple[str, tuple[str, ...]]]:
    paths = [("GRPO", ("grpo",)), ("ReasonMaxxer", ("reasonmaxxer",))]
    if gate_ablation:
        paths += [(f"ReasonMaxxer gate={g}", ("gate_ablation", g)) for g in ("random", "all")]
    return paths


_REQUIRED = object()


def collect(runs: list[dict], path: tuple[str, ...], key: str, default=_REQUIRED) -> list:
    """``key`` ("test", "ledger", "engines") of the method at ``path`` in every seed's run (``default`` where a run
    lacks it, when given)."""
    out = []
    for run in runs:
        node = run
        for step in path:
            node = node[step]
        out.append(node[key] if default is _REQUIRED else node.get(key, default))
    return out


def engines_used(per_seed: list[dict]) -> dict[str, str]:
    """Which engine each phase used (``{"rollouts": "llama.cpp", "evaluation": "transformers"}``) over the seeds;
    a phase whose engine differed between seeds lists them joined by " + "."""
    phases: dict[str, list[str]] = {}
    for engines in per_seed:
        for phase, engine in engines.items():
            if engine not in phases.setdefault(phase, []):
                phases[phase].append(engine)
    return {phase: " + ".join(names) for phase, names in phases.items()}


def build_report(budget, model, dataset_name, seeds, splits, base, runs, gate_ablation, label) -> dict:
    """The JSON report: configuration, splits, every run, and the seed-pooled summary with the headline."""
    methods = {
        "base": {
            "pass@1": pooled_metric([base["test"]]),
            "greedy": pooled_metric([base["test"]], "greedy_accuracy"),
            "engines": engines_used([base.get("engines", {})]),
        }
    }
    for name, path in method_paths(gate_ablation):
        tests = collect(runs, path, "test")
        methods[name] = {
            "pass@1": pooled_metric(tests),
            "greedy": pooled_metric(tests, "greedy_accuracy"),
            "ledger": mean_ledger(collect(runs, path, "ledger")),
            "engines": engines_used(collect(runs, path, "engines", {})),
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
            "task": dataset_name,
            "seeds": seeds,
            "budget": asdict(budget),
            "device": runs[0]["grpo"]["ledger"]["device"],
            "sizes": {k: len(v) for k, v in splits.items()},
            "gate_ablation": gate_ablation,
            "eval_protocol": {
                "temperature": 0.6,
                "top_p": 0.95,
                "test_samples": budget.num_samples,
                "greedy": True,
                "validation_samples": budget.num_validation_samples,
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
