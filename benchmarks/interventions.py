"""The paper's interventions (its Fig. 2) on the evidence run's adapters: do the base model's uncertain positions
carry the adapter's answer?

For a trained piece, the held-out test problems where its greedy answer and the base's differ in correctness (both
graded in the pieces, llama.cpp): the first ``--per-side`` the adapter *gained* (base wrong, adapter right) and the
first ``--per-side`` it *lost* (base right, adapter wrong), in test order. On these, ``analyze`` decodes greedily
(float32 transformers, base model plus adapter) with every policy: ``base``; ``random`` (a random token of the base's
ranks 2..20 wherever the adapter's token differs from the base's); ``entropy`` (the adapter's token wherever the
base's entropy exceeds τ); ``oracle`` (the adapter's token wherever it differs); and the adapter alone (``teacher``).

Reported per policy: accuracy on the gained and the lost problems, and how often it *carries* the adapter's outcome,
i.e. is right where the adapter is right and wrong where it is wrong, over the problems where the float32 base and
adapter differ in correctness (the engines' rounding moves a few problems, so this set is re-checked, not assumed),
with bootstrap 95% CIs. The paper's reading: random no better than the base, entropy-gated close to the oracle and
the teacher. A policy that breaks answers "carries" the adapter's losses too, so the random control is read on the
gained problems. Choosing the problems where the two differ is what makes ~24 problems informative: where the base and
the adapter agree, every policy mostly gives their answer. It says *how* the adapter changes answers, not how often:
that is the test evaluation's.

    python benchmarks/interventions.py --runs-dir runs/evidence --pieces grpo_equal-seed1 reasonmaxxer-seed2

Resumable like ``footprints.py``: each adapter's report is kept in ``--workdir/<piece>.json`` with its key (a hash of
the adapter's weights, the problems, the settings) and reused; ``--out`` is written after each adapter, then a plot
beside it (``.png``): per adapter, the share each policy carries, with its CI.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.analysis import AdapterDisabled, AnalysisConfig, run_analysis
from trl_reasonmaxxer.benchmarking.compare import kept_adapter_results, piece_test_split
from trl_reasonmaxxer.benchmarking.pieces import PieceStore, git_commit, trained_pieces
from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.evaluation import load_model_for_eval, save_results
from trl_reasonmaxxer.plotting import new_figure, save_figure
from trl_reasonmaxxer.stats import paired_difference


POLICIES = ("base", "random", "entropy", "oracle", "teacher")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces-dir", default="docs/results/pieces")
    parser.add_argument("--pieces", nargs="+", required=True, help="trained pieces whose adapters to analyse")
    parser.add_argument("--runs-dir", default=None, help="the comparison's output_dir on this machine")
    parser.add_argument("--per-side", type=int, default=12, help="gained and lost problems, each")
    parser.add_argument("--tau", type=float, default=1.2, help="the entropy gate of the intervention (nats)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--workdir", default="runs/interventions")
    parser.add_argument("--out", default="docs/results/interventions.json")
    return parser.parse_args(argv)


def disagreements(base: Sequence[Mapping], adapter: Sequence[Mapping], per_side: int) -> dict[str, list[str]]:
    """The first ``per_side`` problem ids (in the adapter's order) whose greedy completion the adapter ``gained``
    (base wrong, adapter right) and ``lost`` (base right, adapter wrong); records as the pieces' ``test`` holds."""
    base_correct = {str(r["id"]): bool(r["greedy_correct"]) for r in base}
    sides = {"gained": [], "lost": []}
    for record in adapter:
        pid = str(record["id"])
        if pid not in base_correct:
            raise ValueError(
                f"Problem {pid} of the adapter's test records is not in the base's: pair pieces of one run."
            )
        own = bool(record["greedy_correct"])
        if own != base_correct[pid]:
            side = sides["gained" if own else "lost"]
            if len(side) < per_side:
                side.append(pid)
    return sides


def outcomes(correct: Mapping[str, Mapping[str, bool]], sides: Mapping[str, Sequence[str]]) -> dict:
    """Per policy, from ``{problem id: {policy: correct}}``: accuracy on each side, and how often it carries the
    teacher's outcome where the float32 base and teacher differ (a bootstrap 95% CI; ``None`` where they never do),
    and the entropy-gated policy against the random control there."""
    split = [pid for pid, c in correct.items() if c["base"] != c["teacher"]]

    def carried(policy: str) -> dict[str, float]:
        return {pid: float(correct[pid][policy] == correct[pid]["teacher"]) for pid in split}

    def accuracy(policy: str, ids: Sequence[str]) -> float | None:
        return sum(correct[pid][policy] for pid in ids) / len(ids) if ids else None

    zero = dict.fromkeys(split, 0.0)
    result = {"split_problems": len(split), "policies": {}, "entropy-random": None}
    for policy in POLICIES:
        result["policies"][policy] = {
            "accuracy": {side: accuracy(policy, ids) for side, ids in sides.items()},
            "carried": paired_difference(carried(policy), zero) if split else None,
        }
    if split:
        result["entropy-random"] = paired_difference(carried("entropy"), carried("random"))
    return result


def analyse(piece: dict, folder: str, args, base_piece: dict) -> dict:
    """The interventions of the adapter in ``folder`` on the problems it gained and lost against the base."""
    sides = disagreements(base_piece["test"]["records"], piece["test"]["records"], args.per_side)
    chosen = {pid for ids in sides.values() for pid in ids}
    if not chosen:
        raise ValueError(
            f"{piece['name']} and the base agree on every test problem's greedy outcome: nothing to analyse."
        )
    budget, test = piece_test_split(piece)
    test = test.filter(lambda row: str(row["id"]) in chosen)
    config = AnalysisConfig(
        max_completion_length=budget.max_completion_length, batch_size=args.batch_size, tau=args.tau
    )
    teacher, tokenizer = load_model_for_eval(
        resolve_model(piece["settings"]["model"]), os.path.join(folder, "adapter")
    )
    report = run_analysis(AdapterDisabled(teacher), teacher, tokenizer, test, config)
    return {
        "method": piece["method"],
        "seed": piece["seed"],
        "sides": sides,
        "correct": {
            str(r["id"]): {policy: bool(r[policy]["correct"]) for policy in POLICIES} for r in report["records"]
        },
        "oracle_matches_teacher": report.get("oracle_matches_teacher"),
        "interventions": report["interventions"],
        "divergence_changed_percent": report["divergence"]["changed_percent"],
        "config": asdict(config),
        "wall_s": report["wall_time_s"],
        "commit": git_commit(),
    }


def format_table(results: Mapping[str, dict]) -> str:
    lines = []
    for name, r in results.items():
        o = r["outcomes"]
        sides = {side: len(ids) for side, ids in r["sides"].items()}
        lines += [
            f"{name}: {sides['gained']} gained, {sides['lost']} lost problems; the float32 base and adapter differ on "
            f"{o['split_problems']}; oracle output = the adapter's on {100 * r['oracle_matches_teacher']:.0f}%",
            f"{'policy':<10}{'gained acc':>12}{'lost acc':>10}{'carries the adapter outcome (95% CI)':>40}",
        ]
        for policy, p in o["policies"].items():
            gained, lost = (_share(p["accuracy"][side]) for side in ("gained", "lost"))
            lines.append(f"{policy:<10}{gained:>12}{lost:>10}{_interval(p['carried']):>40}")
        lines += [f"entropy - random: {_interval(o['entropy-random'], '+')}", ""]
    return "\n".join(lines)


def plot(results: Mapping[str, dict], path: str) -> str:
    """One panel per adapter: the share of its changed problems on which each policy carries its outcome, with the
    95% CI (the base carries none by construction, so it is left out)."""
    fig, axes = new_figure(3.2 * len(results) + 0.6, 3.4, ncols=len(results), sharey=True)
    axes = axes if len(results) > 1 else [axes]
    policies = POLICIES[1:]
    for ax, (name, r) in zip(axes, results.items()):
        carried = [r["outcomes"]["policies"][p]["carried"] for p in policies]
        means = [c["mean"] if c else 0.0 for c in carried]
        errors = [[m - c["ci95"][0] if c else 0.0 for m, c in zip(means, carried)]]
        errors.append([c["ci95"][1] - m if c else 0.0 for m, c in zip(means, carried)])
        ax.bar(range(len(policies)), means, yerr=errors, capsize=3, color=["#999999", "#1f77b4", "#2ca02c", "#444444"])
        ax.set_xticks(range(len(policies)), policies)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} ({r['outcomes']['split_problems']} problems)", fontsize=9)
    axes[0].set_ylabel("carries the adapter's outcome")
    return save_figure(fig, path)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _interval(diff: Mapping | None, sign: str = "") -> str:
    """``mean [lo, hi]`` of a paired difference; ``-`` where there was none (no problem to carry)."""
    if diff is None:
        return "-"
    lo, hi = diff["ci95"]
    return f"{diff['mean']:{sign}.2f} [{lo:{sign}.2f}, {hi:{sign}.2f}]"


def main(argv=None) -> dict:
    args = parse_args(argv)
    store = PieceStore(args.pieces_dir)
    store.check_report_path(args.out)
    pieces = store.load_all()  # checked against each other, as the evidence is
    if "base" not in pieces:
        raise ValueError(f"No base piece in {args.pieces_dir}: the interventions pair each adapter with it.")
    results = {}
    names = trained_pieces(pieces, args.pieces, args.pieces_dir)
    key = {"per_side": args.per_side, "tau": args.tau}
    make = partial(analyse, args=args, base_piece=pieces["base"])
    for name, kept in kept_adapter_results(pieces, names, args.runs_dir, args.workdir, key, make):
        results[name] = kept | {"outcomes": outcomes(kept["correct"], kept["sides"])}
        save_results({"commit": git_commit(), "interventions": results}, args.out)
    print(format_table(results))
    image = plot(results, os.path.splitext(args.out)[0] + ".png")
    print(f"wrote {args.out} and {image}")
    return results


if __name__ == "__main__":
    main()
