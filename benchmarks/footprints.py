"""The footprint of every trained adapter of the evidence run: where its greedy choice departs from the base model's.

For each trained piece in ``--pieces-dir`` (ReasonMaxxer, GRPO, the gate ablation): ``analyze``'s divergence statistics
(the paper's Table 2, docs/analysis.md) of its adapter against the base model, along the base model's greedy decode of
the first ``--num-problems`` held-out test problems of the comparison (its prompts and token budget). Reported: the
share of positions where the adapter's greedy token is the base's 2nd-5th choice (re-ranked) or outside its top 5
(shifted), the base entropy there against elsewhere, and the piece's test accuracy beside them. The paper's RL models
change 1-4% of positions, nearly all re-ranked. No interventions run (``analyze --policies base --run_teacher false``).

Every pair of adapters is then compared along that same base decode (``change_agreement``): of one's changes, how many
the other makes at the same position and, where both change, how often to the same token, each beside its chance
level. Do two methods that move the same few uncertain positions move them the same way?

    python benchmarks/footprints.py --runs-dir runs/evidence               # every trained piece of docs/results/pieces
    python benchmarks/footprints.py --runs-dir runs/evidence --pieces reasonmaxxer-seed0 grpo_equal-seed0

The adapters are looked for under ``--runs-dir`` (the comparison's ``--output_dir`` on this machine), else where the
piece recorded them. Resumable: each adapter's report is kept in ``--workdir/<piece>.json`` with its key (a hash of
the adapter's weights, the settings) and reused while the key matches. Writes ``--out`` after each adapter.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from functools import partial


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.analysis import AdapterDisabled, AnalysisConfig, change_agreement, run_analysis
from trl_reasonmaxxer.benchmarking.compare import kept_adapter_results, piece_test_split
from trl_reasonmaxxer.benchmarking.pieces import PieceStore, git_commit, trained_pieces
from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.evaluation import load_model_for_eval, save_results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces-dir", default="docs/results/pieces")
    parser.add_argument("--pieces", nargs="+", default=None, help="piece names (default: every trained piece)")
    parser.add_argument("--runs-dir", default=None, help="the comparison's output_dir on this machine")
    parser.add_argument("--num-problems", type=int, default=16, help="the first N held-out test problems")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default="runs/footprints")
    parser.add_argument("--out", default="docs/results/footprints.json")
    return parser.parse_args(argv)


def footprint(report: dict) -> dict:
    """The figures of one ``run_analysis`` report that the table shows."""
    d = report["divergence"]
    return {
        "positions": d["positions"],
        "reranked_percent": d["reranked"]["percent"],
        "shifted_percent": d["shifted"]["percent"],
        "changed_percent": d["changed_percent"],
        "entropy_ratio": d["entropy_ratio"],
        "mean_rank_reranked": d["mean_rank_reranked"],
        "base_greedy_pass@1": report["interventions"]["base"]["pass@1"],
        "tau_for_3_percent": report["calibration"]["tau_for_target"],
    }


def analyse(piece: dict, folder: str, args) -> dict:
    """The divergence of the adapter in ``folder`` against the base model on the piece's first test problems."""
    budget, test = piece_test_split(piece)
    test = test.select(range(min(args.num_problems, len(test))))
    config = AnalysisConfig(
        max_completion_length=budget.max_completion_length,
        batch_size=args.batch_size,
        policies=["base"],
        run_teacher=False,
    )
    teacher, tokenizer = load_model_for_eval(
        resolve_model(piece["settings"]["model"]), os.path.join(folder, "adapter")
    )
    start = time.perf_counter()
    report = run_analysis(AdapterDisabled(teacher), teacher, tokenizer, test, config)
    summary = piece["test"]["summary"]
    return footprint(report) | {
        "method": piece["method"],
        "seed": piece["seed"],
        "num_problems": len(test),
        "test_pass@1": summary["pass@1"],
        "test_greedy": summary.get("greedy_accuracy"),
        "config": asdict(config),
        "wall_s": time.perf_counter() - start,
        "commit": git_commit(),
        # each position's adapter-token base rank, for the pairwise agreement (kept in --workdir, not in --out)
        "ranks": [r for record in report["records"] for r in record["base"]["teacher_rank"]],
    }


def agreements(results: dict) -> dict:
    """``change_agreement`` of every pair of adapters, keyed ``"<a> | <b>"``."""
    names = list(results)
    return {
        f"{a} | {b}": change_agreement(results[a]["ranks"], results[b]["ranks"])
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }


def format_table(results: dict) -> str:
    lines = [
        f"{'piece':<30}{'test pass@1':>12}{'greedy':>8}{'positions':>10}{'re-ranked':>11}{'shifted':>9}"
        f"{'entropy ratio':>15}{'mean rank':>11}"
    ]
    for name, r in results.items():
        ratio = "-" if r["entropy_ratio"] is None else f"{r['entropy_ratio']:.2f}x"
        rank = "-" if r["mean_rank_reranked"] is None else f"{r['mean_rank_reranked']:.2f}"
        greedy = "-" if r["test_greedy"] is None else f"{r['test_greedy']:.3f}"
        lines.append(
            f"{name:<30}{r['test_pass@1']:>12.3f}{greedy:>8}{r['positions']:>10}{r['reranked_percent']:>10.2f}%"
            f"{r['shifted_percent']:>8.2f}%{ratio:>15}{rank:>11}"
        )
    return "\n".join(lines)


def format_agreement(pairs: dict) -> str:
    def share(value):
        return "-" if value is None else f"{value:.0%}"

    lines = [
        f"{'a | b':<56}{'a':>6}{'b':>6}{'both':>6}{'(chance)':>10}{'b|a':>6}{'a|b':>6}{'same':>6}{'same|both':>11}"
        f"{'(chance)':>10}"
    ]
    for name, p in pairs.items():
        chance_same = share(p["chance_same"])
        lines.append(
            f"{name:<56}{p['a']:>6}{p['b']:>6}{p['both']:>6}{p['chance_both']:>10.1f}{share(p['b_given_a']):>6}"
            f"{share(p['a_given_b']):>6}{p['same_token']:>6}{share(p['same_given_both']):>11}{chance_same:>10}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    store = PieceStore(args.pieces_dir)
    store.check_report_path(args.out)
    pieces = store.load_all()  # checked against each other, as the evidence is
    names = trained_pieces(pieces, args.pieces, args.pieces_dir)
    results, pairs = {}, {}
    key = {"num_problems": args.num_problems, "kept": ["ranks"]}
    make = partial(analyse, args=args)
    for name, result in kept_adapter_results(pieces, names, args.runs_dir, args.workdir, key, make):
        results[name] = result
        figures = {n: {k: v for k, v in r.items() if k != "ranks"} for n, r in results.items()}
        pairs = agreements(results)
        save_results({"commit": git_commit(), "footprints": figures, "agreement": pairs}, args.out)
    print(format_table(results))
    if pairs:
        print(format_agreement(pairs))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
