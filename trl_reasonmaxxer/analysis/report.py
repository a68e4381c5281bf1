"""The paper's token-level evidence for one (base, teacher) pair: divergence, interventions, τ calibration.

:func:`run_analysis` decodes every prompt greedily once per policy (base, random, entropy-gated, oracle; the base run
also gives the divergence statistics), once more with the teacher alone (``generate``), grades every completion with
the task's reward, and returns a JSON-serialisable report; :func:`save_report` writes it with a table and PNG plots.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..evaluation import grade_completions, mean_and_stderr, plot_comparison
from ..plotting import new_figure, save_figure
from ..rewards import math_accuracy_reward
from ..rollouts import eos_token_ids, generate_completions, tokenize_prompt
from .calibration import calibration_report
from .decoding import BASE, ENTROPY, ORACLE, POLICIES, RANDOM, guided_greedy, make_policy
from .divergence import CLASSES, RERANKED, SHIFTED, UNSHIFTED, classify_rank, summarize_divergence


TEACHER = "teacher"
# bar-chart and table order: the paper's Fig. 2
ORDER = (BASE, RANDOM, ENTROPY, ORACLE, TEACHER)


@dataclass
class AnalysisConfig:
    r"""
    Settings of :func:`run_analysis` (and flags of ``trl-reasonmaxxer analyze``). Defaults follow the paper
    (method.md §2–3).

    Parameters:
        > Decoding

        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum completion tokens per prompt; a completion without EOS by then is truncated (and graded as it
            is).
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts decoded together (left-padded). Greedy results do not depend on it beyond float rounding.

        > Divergence

        top_k (`int`, *optional*, defaults to `5`):
            A position where the teacher's greedy token is in the base top-`top_k` but not top-1 is *reranked*;
            outside it, *shifted*.

        > Interventions

        policies (`list[str]`, *optional*, defaults to `["base", "random", "entropy", "oracle"]`):
            Which guided decodes to run (`base` is always run: it gives the divergence statistics).
        tau (`float`, *optional*, defaults to `1.2`):
            Entropy gate in nats: the `entropy` policy inserts the teacher's token wherever base entropy > τ.
        random_top (`int`, *optional*, defaults to `20`):
            The random control inserts a token drawn uniformly from base ranks 2..`random_top` at the oracle's
            positions.
        seed (`int`, *optional*, defaults to `42`):
            Seed of the random control.
        run_teacher (`bool`, *optional*, defaults to `True`):
            Also decode the teacher alone (its pass@1, and the check that the oracle reproduces it).

        > τ calibration

        target_fraction (`float`, *optional*, defaults to `0.03`):
            The share of completion tokens the calibrated τ should gate (the trainer's `fork_fraction`).
    """

    # Parameters that control decoding
    max_completion_length: int = field(
        default=256,
        metadata={"help": "Maximum completion tokens per prompt (a completion cut there is graded as is)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts decoded together (left-padded)."})
    # Parameters that control the divergence statistics
    top_k: int = field(
        default=5,
        metadata={"help": "The teacher's token in the base top-k but not top-1 is reranked; outside it, shifted."},
    )
    # Parameters that control the interventions
    policies: list[str] = field(
        default_factory=lambda: [BASE, RANDOM, ENTROPY, ORACLE],
        metadata={"help": "Guided decodes to run (base always runs: it gives the divergence).", "choices": POLICIES},
    )
    tau: float = field(
        default=1.2, metadata={"help": "Entropy gate (nats) of the entropy-gated intervention (the paper's τ)."}
    )
    random_top: int = field(
        default=20, metadata={"help": "The random control draws from base ranks 2..random_top at the oracle's spots."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random control (and of the problem subset)."})
    run_teacher: bool = field(default=True, metadata={"help": "Also decode the teacher alone."})
    # Parameters that control the τ calibration
    target_fraction: float = field(
        default=0.03, metadata={"help": "Share of completion tokens the calibrated τ should gate (fork_fraction)."}
    )

    def __post_init__(self):
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"Unknown policies {unknown}; choose from: {', '.join(POLICIES)}.")
        if BASE not in self.policies:
            self.policies = [BASE, *self.policies]


def intervention_summary(decoded: Sequence[dict], graded: Sequence[dict]) -> dict:
    """pass@1 (± stderr over problems) of one greedy completion per problem, and the share of completion tokens
    the policy gated (``touched_fraction``) and actually changed from the base model's greedy token."""
    mean, stderr = mean_and_stderr([float(g["correct"]) for g in graded])
    tokens = sum(len(d["completion_ids"]) for d in decoded)
    summary = {"pass@1": mean, "pass@1_stderr": stderr, "num_problems": len(graded)}
    if "gated" in decoded[0]:
        summary["touched_fraction"] = sum(sum(d["gated"]) for d in decoded) / tokens
        summary["changed_fraction"] = sum(sum(d["changed"]) for d in decoded) / tokens
    summary |= {
        "mean_completion_tokens": tokens / len(decoded),
        "truncation_rate": sum(d["truncated"] for d in decoded) / len(decoded),
        "extraction_rate": sum(g["answer"] is not None for g in graded) / len(graded),
    }
    return summary


def run_analysis(
    base,
    teacher,
    tokenizer,
    dataset,
    config: AnalysisConfig | None = None,
    pool_entropies: Sequence[Sequence[float]] | None = None,
    reward_fn: Callable = math_accuracy_reward,
) -> dict:
    """Divergence, interventions and τ calibration of ``teacher`` against ``base`` on ``dataset``'s prompts.

    ``dataset`` has ``prompt`` and ``solution`` columns (:func:`~trl_reasonmaxxer.tasks.load_task`). For a base
    model plus adapter, pass the PeftModel as ``teacher`` and ``AdapterDisabled(it)`` as ``base``. The τ curve uses
    ``pool_entropies`` (per-rollout base entropies of a rollout pool) when given, else the base entropies along the
    base model's greedy completions.
    """
    config = config or AnalysisConfig()
    rows = list(dataset)
    if not rows:
        raise ValueError("The analysis dataset is empty.")
    if not {"prompt", "solution"} <= set(rows[0]):
        raise ValueError("The analysis dataset needs `prompt` and `solution` columns (see tasks.load_task).")
    start = time.perf_counter()
    prompt_ids = [tokenize_prompt(tokenizer, row["prompt"]) for row in rows]
    eos_ids = eos_token_ids(tokenizer, teacher)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    decoded: dict[str, list[dict]] = {}
    for name in config.policies:
        policy = make_policy(name, tau=config.tau, random_top=config.random_top, seed=config.seed)
        decoded[name] = guided_greedy(
            base,
            teacher,
            prompt_ids,
            policy,
            eos_ids,
            pad_id,
            config.max_completion_length,
            config.batch_size,
            desc=name,
        )
    if config.run_teacher:
        decoded[TEACHER] = [
            g[0]
            for g in generate_completions(
                teacher,
                tokenizer,
                prompt_ids,
                1,
                config.max_completion_length,
                do_sample=False,
                batch_size=config.batch_size,
                seed=None,
                desc=TEACHER,
            )
        ]
    graded = {
        name: [g[0] for g in grade_completions(rows, [[d] for d in runs], tokenizer, reward_fn)]
        for name, runs in decoded.items()
    }

    base_runs = decoded[BASE]
    divergence = summarize_divergence(
        [r for d in base_runs for r in d["teacher_rank"]], [h for d in base_runs for h in d["entropy"]], config.top_k
    )
    entropies = pool_entropies if pool_entropies is not None else [d["entropy"] for d in base_runs]
    calibration = calibration_report(entropies, config.target_fraction, taus=(config.tau,))
    calibration["source"] = "rollout pool" if pool_entropies is not None else "base greedy completions"
    report = {
        "config": asdict(config),
        "num_problems": len(rows),
        "divergence": divergence,
        "interventions": {
            name: intervention_summary(decoded[name], graded[name]) for name in ORDER if name in decoded
        },
        "calibration": calibration,
        "records": _records(rows, decoded, graded, config.top_k),
    }
    if ORACLE in decoded and TEACHER in decoded:
        same = [o["completion_ids"] == t["completion_ids"] for o, t in zip(decoded[ORACLE], decoded[TEACHER])]
        report["oracle_matches_teacher"] = sum(same) / len(same)
    report["wall_time_s"] = time.perf_counter() - start
    return report


def _records(rows, decoded, graded, top_k) -> list[dict]:
    """Per problem: its id and gold answer, each run's answer/correctness/length, and the base run's per-position
    classes (for plotting and re-analysis without decoding again)."""
    records = []
    for i, row in enumerate(rows):
        record = {"id": row.get("id", str(i)), "solution": row["solution"]}
        for name, runs in decoded.items():
            g, d = graded[name][i], runs[i]
            record[name] = {
                "answer": g["answer"],
                "correct": g["correct"],
                "tokens": len(d["completion_ids"]),
                "text": g["text"],
            }
            if "gated" in d:
                record[name]["gated_positions"] = [j for j, x in enumerate(d["gated"]) if x]
        base = decoded[BASE][i]
        record["base"] |= {"entropy": base["entropy"], "teacher_rank": base["teacher_rank"]}
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------
# Output: table, JSON, plots


def format_table(report: dict) -> str:
    """The report as plain-text tables (divergence, interventions, τ calibration)."""
    d, c = report["divergence"], report["calibration"]
    ratio = f"{d['entropy_ratio']:.2f}x" if d["entropy_ratio"] is not None else "n/a"
    mean_rank = f"{d['mean_rank_reranked']:.2f}" if d["mean_rank_reranked"] is not None else "n/a"
    lines = [
        f"Divergence over {d['positions']} base greedy positions ({report['num_problems']} problems)",
        f"  unshifted {d[UNSHIFTED]['percent']:.2f}%   reranked {d[RERANKED]['percent']:.2f}%   "
        f"shifted {d[SHIFTED]['percent']:.2f}%   entropy ratio (reranked/unshifted) {ratio}   "
        f"mean base rank of teacher token (reranked) {mean_rank}",
        "",
        f"{'intervention':<14}{'pass@1':>16}{'touched':>10}{'changed':>10}{'tokens':>9}{'truncated':>11}",
    ]
    for name, s in report["interventions"].items():
        touched = f"{100 * s['touched_fraction']:.2f}%" if "touched_fraction" in s else "-"
        changed = f"{100 * s['changed_fraction']:.2f}%" if "changed_fraction" in s else "-"
        lines.append(
            f"{name:<14}{s['pass@1']:>8.3f} ± {s['pass@1_stderr']:.3f}{touched:>10}{changed:>10}"
            f"{s['mean_completion_tokens']:>9.1f}{s['truncation_rate']:>11.2f}"
        )
    if "oracle_matches_teacher" in report:
        share = 100 * report["oracle_matches_teacher"]
        lines.append(f"oracle output identical to the teacher's on {share:.0f}% of problems")
    lines += [
        "",
        f"τ calibration ({c['source']}, {c['tokens']} tokens): τ = {c['tau_for_target']:.3f} nats gates "
        f"{100 * c['achieved_fraction']:.2f}% (target {100 * c['target_fraction']:.2f}%); "
        + ", ".join(f"τ = {t} gates {100 * f:.2f}%" for t, f in c["fraction_at"].items()),
    ]
    return "\n".join(lines)


def save_report(report: dict, output_dir: str) -> dict[str, str]:
    """Write ``analysis.json``, ``analysis.txt`` (the table) and the four PNG plots; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, f"{name}.png") for name in ("entropy", "rank", "interventions", "tau")}
    paths |= {"json": os.path.join(output_dir, "analysis.json"), "table": os.path.join(output_dir, "analysis.txt")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(paths["table"], "w", encoding="utf-8") as f:
        f.write(format_table(report) + "\n")
    plot_entropy_by_class(report, paths["entropy"])
    plot_rank_histogram(report["divergence"], paths["rank"])
    plot_comparison(report["interventions"], paths["interventions"], metric="pass@1")
    plot_tau_curve(report["calibration"], paths["tau"], report["config"]["tau"])
    return paths


def plot_entropy_by_class(report: dict, path: str) -> str:
    """Histogram (density) of base entropy at unshifted, reranked and shifted positions of the base decode."""
    top_k = report["divergence"]["top_k"]
    by_class: dict[str, list[float]] = {name: [] for name in CLASSES}
    for record in report["records"]:
        for h, r in zip(record["base"]["entropy"], record["base"]["teacher_rank"]):
            by_class[classify_rank(r, top_k)].append(h)
    fig, ax = new_figure()
    top = max((h for hs in by_class.values() for h in hs), default=1.0) or 1.0
    bins = [top * i / 30 for i in range(31)]
    for name, color in zip(CLASSES, ("#4C72B0", "#DD8452", "#C44E52")):
        if by_class[name]:
            ax.hist(
                by_class[name],
                bins=bins,
                density=True,
                alpha=0.55,
                color=color,
                label=f"{name} (n={len(by_class[name])})",
            )
    ratio = report["divergence"]["entropy_ratio"]
    ax.set_title("Base entropy by position class" + (f" (reranked/unshifted = {ratio:.2f}x)" if ratio else ""))
    ax.set_xlabel("base entropy (nats)")
    ax.set_ylabel("density")
    ax.legend()
    return save_figure(fig, path)


def plot_rank_histogram(divergence: dict, path: str) -> str:
    """Counts of the teacher token's base rank at the positions where the two models disagree (rank ≥ 2)."""
    hist = {k: v for k, v in divergence["rank_histogram"].items() if k != "1"}
    fig, ax = new_figure()
    ax.bar(range(len(hist)), list(hist.values()), color="#4C72B0")
    ax.set_xticks(range(len(hist)), list(hist), rotation=90, fontsize=8)
    ax.axvline(divergence["top_k"] - 1.5, color="black", linestyle="--", linewidth=1)  # between rank top_k and top_k+1
    ax.set_xlabel(f"rank of the teacher's token under the base (dashed: top-{divergence['top_k']})")
    ax.set_ylabel("positions")
    mean = divergence["mean_rank_reranked"]
    ax.set_title(
        f"Teacher token's base rank, {sum(hist.values())} disagreements"
        + (f" (reranked mean {mean:.2f})" if mean else ""),
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_tau_curve(calibration: dict, path: str, tau: float | None = None) -> str:
    """Gated share of completion tokens against τ, with the calibrated τ (and the interventions' τ) marked."""
    fig, ax = new_figure()
    curve = calibration["curve"]
    ax.plot(curve["tau"], [100 * f for f in curve["fraction"]], color="#4C72B0")
    t = calibration["tau_for_target"]
    ax.axvline(t, color="#C44E52", linestyle="--", label=f"τ = {t:.2f}: {100 * calibration['achieved_fraction']:.2f}%")
    if tau is not None and f"{tau:g}" in calibration["fraction_at"]:
        share = 100 * calibration["fraction_at"][f"{tau:g}"]
        ax.axvline(tau, color="gray", linestyle=":", label=f"τ = {tau:g}: {share:.2f}%")
    ax.set_yscale("symlog", linthresh=1.0)  # the interesting range is a few percent: linear below 1%, log above
    ax.set_ylim(0, 100)
    ax.set_xlabel("τ (nats)")
    ax.set_ylabel("completion tokens with H > τ (%)")
    ax.set_title(f"τ calibration on {calibration['source']} ({calibration['tokens']} tokens)")
    ax.legend()
    return save_figure(fig, path)
