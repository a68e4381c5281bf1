"""Paired comparisons of two models evaluated on the same problems: the difference with a bootstrap 95% CI.

Two models graded on one problem set are compared problem by problem: each problem's score is the mean over its
samples (and over training seeds, when a method was trained several times), and the difference of the two means is
resampled over problems (the paired bootstrap). Pairing removes the problem-difficulty variance that dominates the
unpaired standard errors of small evaluations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def per_problem_scores(result: Mapping, metric: str = "pass@1") -> dict[str, float]:
    """``{problem id: score}`` from an ``evaluation.evaluate`` result.

    ``pass@1`` is the share of a problem's samples graded correct (the unbiased pass@1 estimate); ``greedy`` is
    1.0 or 0.0 from its greedy completion.
    """
    scores = {}
    for record in result["records"]:
        if metric == "greedy":
            if "greedy_correct" not in record:
                raise ValueError("This evaluation has no greedy completions (evaluate(..., greedy=True)).")
            scores[str(record["id"])] = float(record["greedy_correct"])
        elif metric == "pass@1":
            correct = record.get("correct")
            if not correct:
                raise ValueError("This evaluation has no samples (evaluate(..., num_samples>0)).")
            scores[str(record["id"])] = sum(map(bool, correct)) / len(correct)
        else:
            raise ValueError(f"metric must be 'pass@1' or 'greedy', got {metric!r}.")
    return scores


def truncated_problems(result: Mapping) -> set[str]:
    """Ids of the problems on which any of an ``evaluation.evaluate`` result's samples hit the token budget: where a
    model that answers in fewer tokens can gain without reasoning better."""
    if not any("truncated" in record for record in result["records"]):
        raise ValueError("This evaluation records no truncation per sample (evaluate(..., num_samples>0)).")
    return {str(record["id"]) for record in result["records"] if any(record.get("truncated") or ())}


def average_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-problem mean over the runs (seeds) of one method; every run must cover the same problems."""
    if not runs:
        raise ValueError("No runs to average.")
    ids = set(runs[0])
    for i, run in enumerate(runs[1:], 1):
        if set(run) != ids:
            raise ValueError(f"Run {i} was evaluated on other problems than run 0: pair runs on one problem set.")
    return {pid: sum(run[pid] for run in runs) / len(runs) for pid in runs[0]}


def paired_difference(
    treatment: Mapping[str, float],
    control: Mapping[str, float],
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Mean of ``treatment − control`` over the problems both cover, with a percentile bootstrap 95% CI.

    Returns ``mean``, ``ci95`` ``[lo, hi]``, ``n`` (problems), ``better``/``worse`` (problems where the treatment
    scored higher/lower) and ``resolved`` (whether the CI excludes 0).
    """
    ids = sorted(set(treatment) & set(control))
    if not ids:
        raise ValueError("The two evaluations share no problem id: evaluate both models on the same problems.")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}.")
    diffs = [treatment[i] - control[i] for i in ids]
    n = len(diffs)
    mean = sum(diffs) / n
    rng = random.Random(seed)
    boots = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(num_resamples))
    lo = boots[int(0.025 * (num_resamples - 1))]
    hi = boots[int(round(0.975 * (num_resamples - 1)))]
    return {
        "mean": mean,
        "ci95": [lo, hi],
        "n": n,
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
        "resolved": lo > 0 or hi < 0,
    }


def paired_differences(tuned: Mapping, base: Mapping) -> dict:
    """:func:`paired_difference` of two ``evaluation.evaluate`` results on the same problems, for pass@1 and greedy
    accuracy (each when both have it): ``{metric: difference}``."""
    has = lambda result, key: any(record.get(key) not in (None, []) for record in result["records"])
    return {
        metric: paired_difference(per_problem_scores(tuned, metric), per_problem_scores(base, metric))
        for metric, key in (("pass@1", "correct"), ("greedy", "greedy_correct"))
        if has(tuned, key) and has(base, key)
    }


def describe(diff: Mapping, label: str = "difference") -> str:
    """One line: the mean difference, its CI, the problems won and lost, and whether the CI resolves it."""
    lo, hi = diff["ci95"]
    verdict = "the CI excludes 0" if diff["resolved"] else "the CI includes 0: this size cannot tell"
    return (
        f"{label}: {diff['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] over {diff['n']} problems "
        f"({diff['better']} better, {diff['worse']} worse; {verdict})"
    )
