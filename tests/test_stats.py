"""Paired comparisons: per-problem scores, seed averaging, the paired bootstrap CI."""

import pytest

from trl_reasonmaxxer.stats import (
    average_seeds,
    describe,
    paired_difference,
    per_problem_scores,
    truncated_problems,
)


def result(records):
    return {"summary": {}, "records": records}


def test_per_problem_scores_reads_samples_and_greedy():
    r = result(
        [
            {"id": "a", "correct": [True, False], "greedy_correct": True},
            {"id": "b", "correct": [False, False], "greedy_correct": False},
        ]
    )
    assert per_problem_scores(r) == {"a": 0.5, "b": 0.0}
    assert per_problem_scores(r, "greedy") == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="no greedy completions"):
        per_problem_scores(result([{"id": "a", "correct": [True]}]), "greedy")
    with pytest.raises(ValueError, match="metric must be"):
        per_problem_scores(r, "maj@4")


def test_truncated_problems_are_those_with_any_sample_at_the_budget():
    r = result(
        [
            {"id": 1, "correct": [True, False], "truncated": [False, True]},
            {"id": 2, "correct": [False, False], "truncated": [False, False]},
        ]
    )
    assert truncated_problems(r) == {"1"}
    with pytest.raises(ValueError, match="records no truncation per sample"):
        truncated_problems(result([{"id": "a", "greedy_correct": True}]))


def test_average_seeds_is_per_problem_and_refuses_other_problem_sets():
    assert average_seeds([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.0}]) == {"a": 0.5, "b": 0.0}
    with pytest.raises(ValueError, match="Run 1 was evaluated on other problems"):
        average_seeds([{"a": 1.0}, {"b": 1.0}])


def test_paired_difference_mean_counts_and_ci():
    control = {str(i): 0.0 for i in range(40)}
    treatment = {str(i): (1.0 if i < 10 else 0.0) for i in range(40)}
    d = paired_difference(treatment, control, num_resamples=2000)
    assert d["mean"] == pytest.approx(0.25) and d["n"] == 40 and (d["better"], d["worse"]) == (10, 0)
    lo, hi = d["ci95"]
    assert 0.0 < lo < 0.25 < hi < 0.5 and d["resolved"]
    # a symmetric difference is not resolved, and the CI straddles 0
    mixed = {str(i): (1.0 if i < 5 else -1.0 if i < 10 else 0.0) for i in range(40)}
    d = paired_difference(mixed, control, num_resamples=2000)
    assert d["mean"] == 0.0 and d["ci95"][0] < 0 < d["ci95"][1] and not d["resolved"]
    assert "this size cannot tell" in describe(d)


def test_pairing_removes_problem_difficulty_only_shared_ids_count():
    # problem difficulty differs a lot, the treatment adds exactly 0.1 everywhere: the CI is a point
    control = {str(i): i / 100 for i in range(50)}
    treatment = {k: v + 0.1 for k, v in control.items()} | {"extra": 1.0}
    d = paired_difference(treatment, control, num_resamples=500)
    assert d["n"] == 50 and d["ci95"] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="share no problem id"):
        paired_difference({"x": 1.0}, {"y": 1.0})
