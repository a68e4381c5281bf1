"""The analysis toolkit: position classes, τ curve, guided greedy decoding and interventions.

Most decoding tests use ``TableLM``, a language model with hand-set logits (a function of the last token and its
position), so the expected class counts, gated positions and outputs are known exactly; a pure-Python greedy
simulation without batching, padding or caches is the reference. The rest run the real tiny Llama with a LoRA teacher
against HF ``generate``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from trl_reasonmaxxer.analysis import (
    AdapterDisabled,
    AnalysisConfig,
    calibration_report,
    change_agreement,
    classify_rank,
    format_table,
    guided_greedy,
    make_policy,
    run_analysis,
    save_report,
    summarize_divergence,
    tau_curve,
    token_rank,
)
from trl_reasonmaxxer.analysis.divergence import rank_histogram
from trl_reasonmaxxer.rollouts import generate_completions


# ---------------------------------------------------------------------------------------------------------
# Pure functions


def test_token_rank_counts_higher_logits_and_breaks_ties_like_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0, 3.0, -1.0], [5.0, 5.0, 5.0, 0.0, 1.0]])
    ranks = [token_rank(logits, torch.tensor([t, t])).tolist() for t in range(5)]
    assert ranks == [[4, 1], [1, 2], [3, 3], [2, 5], [5, 4]]
    assert token_rank(logits, logits.argmax(-1)).tolist() == [1, 1]  # rank 1 is exactly torch.argmax


@pytest.mark.parametrize("rank, expected", [(1, "unshifted"), (2, "reranked"), (5, "reranked"), (6, "shifted")])
def test_classify_rank(rank, expected):
    assert classify_rank(rank, top_k=5) == expected


def test_classify_rank_rejects_rank_zero():
    with pytest.raises(ValueError, match="1-based"):
        classify_rank(0)


def test_summarize_divergence_counts_ratio_and_mean_rank():
    ranks = [1, 1, 1, 1, 2, 3, 1, 7, 1, 4]
    entropies = [0.5, 0.1, 0.2, 0.2, 3.0, 2.0, 0.0, 9.0, 0.6, 1.0]
    s = summarize_divergence(ranks, entropies, top_k=5)
    assert s["positions"] == 10
    assert [s[c]["count"] for c in ("unshifted", "reranked", "shifted")] == [6, 3, 1]
    assert [s[c]["percent"] for c in ("unshifted", "reranked", "shifted")] == pytest.approx([60.0, 30.0, 10.0])
    assert s["unshifted"]["mean_entropy"] == pytest.approx(1.6 / 6)
    assert s["reranked"]["mean_entropy"] == pytest.approx(2.0)
    assert s["entropy_ratio"] == pytest.approx(2.0 / (1.6 / 6))
    assert s["mean_rank_reranked"] == pytest.approx(3.0)  # ranks 2, 3, 4
    assert s["mean_rank_changed"] == pytest.approx(4.0)  # ranks 2, 3, 7, 4
    assert s["changed_percent"] == pytest.approx(40.0)  # reranked + shifted
    assert s["median_rank_changed"] in (3.0, 4.0)
    assert s["rank_histogram"]["1"] == 6 and s["rank_histogram"]["7"] == 1 and sum(s["rank_histogram"].values()) == 10


def test_summarize_divergence_without_disagreement_and_bad_input():
    s = summarize_divergence([1, 1, 1], [0.1, 0.2, 0.3])
    assert s["reranked"]["count"] == 0 and s["entropy_ratio"] is None and s["mean_rank_reranked"] is None
    assert s["changed_percent"] == 0.0
    with pytest.raises(ValueError, match="one of each per position"):
        summarize_divergence([1, 2], [0.1])
    with pytest.raises(ValueError, match="every completion is empty"):
        summarize_divergence([], [])


def test_change_agreement_counts_positions_tokens_and_chance():
    a = [1, 2, 3, 2, 1, 1, 4, 1]
    b = [1, 2, 2, 1, 5, 1, 4, 1]
    p = change_agreement(a, b)
    # a changes 4 positions, b 4; both at positions 1, 2, 6; the same token (equal rank) at 1 and 6
    assert (p["positions"], p["a"], p["b"], p["both"], p["same_token"]) == (8, 4, 4, 3, 2)
    assert p["b_given_a"] == p["a_given_b"] == 0.75 and p["same_given_both"] == pytest.approx(2 / 3)
    assert p["chance_both"] == 4 * 4 / 8
    # over the 3 shared positions a picks ranks {2, 3, 4}, b {2, 2, 4}: (1·2 + 0·... + 1·1) / 9
    assert p["chance_same"] == pytest.approx((1 * 2 + 1 * 1) / 9)
    assert change_agreement([2, 3], [2, 3])["same_given_both"] == 1.0


def test_change_agreement_without_shared_changes_and_bad_input():
    p = change_agreement([1, 2, 1], [1, 1, 3])
    assert p["both"] == 0 and p["same_given_both"] is None and p["chance_same"] is None
    assert change_agreement([1, 1], [2, 1])["b_given_a"] is None
    with pytest.raises(ValueError, match="along the same base decode"):
        change_agreement([1, 2], [1])
    with pytest.raises(ValueError, match="No positions"):
        change_agreement([], [])


def test_rank_histogram_tail_bucket():
    expected = {**{str(r): int(r in (1, 3)) for r in range(1, 21)}, ">20": 2}
    assert rank_histogram([1, 3, 21, 100], max_rank=20) == expected


def test_tau_curve_is_monotone_and_calibration_hits_the_target():
    g = torch.Generator().manual_seed(0)
    entropies = [torch.rand(n, generator=g).mul(3).tolist() for n in (40, 25, 35)]  # 100 distinct values
    report = calibration_report(entropies, target_fraction=0.07, taus=(1.2,))
    fractions = report["curve"]["fraction"]
    assert all(a >= b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] == 1.0 and fractions[-1] == 0.0
    assert report["achieved_fraction"] == pytest.approx(0.07)
    flat = [h for row in entropies for h in row]
    assert report["fraction_at"]["1.2"] == pytest.approx(sum(h > 1.2 for h in flat) / 100)
    assert tau_curve(entropies, [report["tau_for_target"]]) == [report["achieved_fraction"]]


# ---------------------------------------------------------------------------------------------------------
# A language model with hand-set logits

V, PAD, EOS = 30, 0, 2


class TableLM(torch.nn.Module):
    """Logits for the next token = ``W[last token]``, sharp (entropy ≈ 0) except at ``flat`` positions, where they
    are scaled down (same ranking, entropy ≈ log V); EOS wins at ``eos_at`` positions and never elsewhere.
    Records the width of every forward call."""

    def __init__(self, seed=0, flat=(), eos_at=()):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(V, V, generator=g)
        successor = 3 + torch.randperm(V - 3, generator=g)  # never PAD, EOS or token 1
        W[torch.arange(V), successor[torch.arange(V) % (V - 3)]] += 12.0
        W[:, [PAD, EOS]] = -30.0
        self.W = torch.nn.Parameter(W, requires_grad=False)
        self.flat, self.eos_at, self.calls = set(flat), set(eos_at), []

    def row(self, token: int, position: int) -> torch.Tensor:
        logits = self.W[token].clone()
        if position in self.eos_at:
            logits[EOS] = 100.0
        return logits * 0.01 if position in self.flat else logits

    def table_logits(self, input_ids, position_ids):
        return torch.stack(
            [
                torch.stack([self.row(int(t), int(p)) for t, p in zip(ts, ps)])
                for ts, ps in zip(input_ids, position_ids)
            ]
        )

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        self.calls.append(input_ids.shape[1])
        logits = self.table_logits(input_ids, position_ids)
        return SimpleNamespace(logits=logits, past_key_values=(past_key_values or 0) + 1)  # a stand-in cache


class Teacher(TableLM):
    """The base's logits, except at ``shifts`` positions ``{position: r}``, where the base's rank-r token wins."""

    def __init__(self, base: TableLM, shifts: dict[int, int]):
        torch.nn.Module.__init__(self)
        self.base, self.shifts, self.calls = base, shifts, []

    def row(self, token, position):
        logits = self.base.row(token, position)
        if position in self.shifts:
            logits[logits.argsort(descending=True)[self.shifts[position] - 1]] = logits.max() + 1.0
        return logits


def simulate(base: TableLM, teacher: TableLM, prompt, choose, max_new_tokens):
    """Reference greedy decode, one token at a time on the full prefix; ``choose(base row, teacher row, position)``
    returns (token, gated)."""
    seq, out = list(prompt), {"completion_ids": [], "gated": []}
    for _ in range(max_new_tokens):
        position = len(seq) - 1
        token, gated = choose(base.row(seq[-1], position), teacher.row(seq[-1], position), position)
        seq.append(token)
        out["completion_ids"].append(token)
        out["gated"].append(gated)
        if token == EOS:
            break
    return out


BASE_GREEDY = lambda b, t, p: (int(b.argmax()), False)  # noqa: E731
TEACHER_GREEDY = lambda b, t, p: (int(t.argmax()), bool(t.argmax() != b.argmax()))  # noqa: E731
PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [15]]  # lengths 4, 6, 1 → left padding in a batch
SHIFTS = {5: 3, 8: 2, 11: 4, 13: 9}  # absolute positions: three reranked (ranks 3, 2, 4), one shifted (9)


def decode(base, teacher, policy, max_new_tokens=12, batch_size=3, prompts=PROMPTS):
    return guided_greedy(base, teacher, prompts, policy, {EOS}, PAD, max_new_tokens, batch_size, disable_progress=True)


def test_divergence_counts_are_exact_at_the_teachers_known_positions():
    base = TableLM()
    out = decode(base, Teacher(base, SHIFTS), make_policy("base"))
    for prompt, row in zip(PROMPTS, out):
        positions = range(len(prompt) - 1, len(prompt) - 1 + 12)  # the positions that predict completion tokens
        expected = [SHIFTS.get(p, 1) for p in positions]
        assert row["teacher_rank"] == expected
        assert not any(row["gated"]) and not any(row["changed"])
        assert row["completion_ids"] == simulate(base, base, prompt, BASE_GREEDY, 12)["completion_ids"]
    ranks, entropies = [r for row in out for r in row["teacher_rank"]], [h for row in out for h in row["entropy"]]
    s = summarize_divergence(ranks, entropies)
    # row 1 (prompt length 4) sees positions 3..14: all four shifts; row 2 (length 6) 5..16: all four; row 3 (1) 0..11:
    # positions 5, 8, 11 only
    assert (s["reranked"]["count"], s["shifted"]["count"], s["unshifted"]["count"]) == (9, 2, 36 - 11)


def test_oracle_reproduces_the_teachers_greedy_output_exactly():
    base = TableLM()
    teacher = Teacher(base, SHIFTS)
    out = decode(base, teacher, make_policy("oracle"))
    for prompt, row in zip(PROMPTS, out):
        expected = simulate(base, teacher, prompt, TEACHER_GREEDY, 12)
        assert row["completion_ids"] == expected["completion_ids"]
        assert row["gated"] == expected["gated"] == row["changed"]
        assert sum(row["gated"]) >= 3  # the corrections happened, and the output differs from the base's
        assert row["completion_ids"] != simulate(base, base, prompt, BASE_GREEDY, 12)["completion_ids"]


def test_entropy_gate_touches_exactly_the_high_entropy_positions():
    flat = {4, 8, 9}
    base = TableLM(flat=flat)
    teacher = Teacher(base, SHIFTS)
    out = decode(base, teacher, make_policy("entropy", tau=1.0))
    for prompt, row in zip(PROMPTS, out):
        positions = list(range(len(prompt) - 1, len(prompt) - 1 + 12))
        assert row["gated"] == [p in flat for p in positions]
        assert all((h > 1.0) == (p in flat) for h, p in zip(row["entropy"], positions))
        assert row["changed"] == [
            p in flat and p in SHIFTS for p in positions
        ]  # the teacher's token, where it differs
        gate = lambda b, t, p: (int(t.argmax()), p in flat) if p in flat else (int(b.argmax()), False)  # noqa: E731
        assert row["completion_ids"] == simulate(base, teacher, prompt, gate, 12)["completion_ids"]


@pytest.mark.parametrize("tau, reference", [(math.inf, BASE_GREEDY), (-1.0, TEACHER_GREEDY)])
def test_entropy_gate_limits_are_base_and_teacher_greedy(tau, reference):
    base = TableLM(flat={6})
    teacher = Teacher(base, SHIFTS)
    out = decode(base, teacher, make_policy("entropy", tau=tau))
    for prompt, row in zip(PROMPTS, out):
        assert row["completion_ids"] == simulate(base, teacher, prompt, reference, 12)["completion_ids"]
        assert all(row["gated"]) == (tau < 0) and any(row["gated"]) == (tau < 0)


def test_random_control_touches_exactly_the_oracles_positions_with_base_top20_alternatives():
    base = TableLM()
    teacher = Teacher(base, SHIFTS)
    out = decode(base, teacher, make_policy("random", seed=3))
    again = decode(base, teacher, make_policy("random", seed=3))
    assert [r["completion_ids"] for r in out] == [r["completion_ids"] for r in again]  # seeded
    for prompt, row in zip(PROMPTS, out):
        seq = list(prompt)
        for j, token in enumerate(row["completion_ids"]):
            position = len(seq) - 1
            b = base.row(seq[-1], position)
            assert row["gated"][j] == (position in SHIFTS) == row["changed"][j]
            if position in SHIFTS:
                assert token_rank(b[None], torch.tensor([token])).item() in range(2, 21)
            else:
                assert token == int(b.argmax())
            seq.append(token)
    assert sum(sum(r["gated"]) for r in out) == 11  # as many as the divergence test's disagreements


def test_eos_stops_each_row_and_batching_does_not_change_the_output():
    base = TableLM(eos_at={9})
    teacher = Teacher(base, SHIFTS)
    prompts = [*PROMPTS, list(range(3, 14))]  # the last prompt (length 11) is past position 9: it never stops
    batched = decode(base, teacher, make_policy("oracle"), prompts=prompts, batch_size=4)
    single = decode(base, teacher, make_policy("oracle"), prompts=prompts, batch_size=1)
    assert [r["completion_ids"] for r in batched] == [r["completion_ids"] for r in single]
    assert [len(r["completion_ids"]) for r in batched] == [7, 5, 10, 12]  # EOS predicted at position 9, kept
    assert [r["truncated"] for r in batched] == [False, False, False, True]
    assert [r["completion_ids"][-1] == EOS for r in batched] == [True, True, True, False]
    for prompt, row in zip(prompts, batched):
        assert row["completion_ids"] == simulate(base, teacher, prompt, TEACHER_GREEDY, 12)["completion_ids"]


def test_one_forward_per_model_per_step_on_the_new_token_only():
    base = TableLM()
    teacher = Teacher(base, SHIFTS)
    decode(base, teacher, make_policy("oracle"), max_new_tokens=12)
    assert base.calls == teacher.calls == [6] + [1] * 11  # prefill of the padded batch, then the KV cache


def test_vocabulary_mismatch_and_bad_arguments_are_reported():
    class Wider(TableLM):
        def row(self, token, position):
            return torch.cat([super().row(token, position), torch.zeros(3)])

    with pytest.raises(ValueError, match="share one tokenizer"):
        decode(TableLM(), Wider(), make_policy("oracle"))
    with pytest.raises(ValueError, match="Unknown intervention policy 'teacher'"):
        make_policy("teacher")
    with pytest.raises(ValueError, match="Unknown policies"):
        AnalysisConfig(policies=["oracle", "sampling"])
    assert AnalysisConfig(policies=["oracle"]).policies == ["base", "oracle"]  # the divergence run is always there
    with pytest.raises(ValueError, match="at least one token"):
        decode(TableLM(), TableLM(), make_policy("base"), prompts=[[5], []])


# ---------------------------------------------------------------------------------------------------------
# The real tiny Llama with a LoRA teacher, against HF generate


def prompts_dataset(n=4):
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"what is {i} plus {i} ?"}] for i in range(n)],
            "solution": [str(2 * i) for i in range(n)],
            "id": [f"p{i}" for i in range(n)],
        }
    )


def test_peft_base_and_oracle_match_generate_with_adapter_off_and_on(tiny_pair):
    model, tokenizer = tiny_pair
    prompts = [tokenizer(t)["input_ids"] for t in ("what is 1 plus 1 ?", "the answer is", "3")]
    eos = {tokenizer.eos_token_id}
    run = lambda name: guided_greedy(
        AdapterDisabled(model),
        model,
        prompts,
        make_policy(name),
        eos,
        tokenizer.pad_token_id,
        10,
        3,
        disable_progress=True,
    )
    gen = lambda: [
        g[0]["completion_ids"]
        for g in generate_completions(
            model, tokenizer, prompts, 1, 10, do_sample=False, batch_size=3, disable_progress=True
        )
    ]
    with model.disable_adapter():
        base_reference = gen()
    teacher_reference = gen()
    assert base_reference != teacher_reference  # the adapter matters, so the comparisons below can fail
    base, oracle = run("base"), run("oracle")
    assert [r["completion_ids"] for r in base] == base_reference
    assert [r["completion_ids"] for r in oracle] == teacher_reference
    assert any(r > 1 for row in base for r in row["teacher_rank"])


def test_run_analysis_report_and_files(tiny_pair, tmp_path):
    model, tokenizer = tiny_pair
    report = run_analysis(
        AdapterDisabled(model),
        model,
        tokenizer,
        prompts_dataset(),
        AnalysisConfig(max_completion_length=8, batch_size=3, tau=2.0, target_fraction=0.2),
    )
    assert list(report["interventions"]) == ["base", "random", "entropy", "oracle", "teacher"]
    assert report["oracle_matches_teacher"] == 1.0
    base_tokens = sum(r["base"]["tokens"] for r in report["records"])
    assert report["divergence"]["positions"] == base_tokens == report["calibration"]["tokens"]
    s = report["interventions"]
    assert s["base"]["touched_fraction"] == 0.0 and s["oracle"]["changed_fraction"] > 0
    assert s["random"]["touched_fraction"] == pytest.approx(s["random"]["changed_fraction"])
    assert "touched_fraction" not in s["teacher"]
    assert report["calibration"]["achieved_fraction"] == pytest.approx(0.2, abs=1 / base_tokens)
    paths = save_report(report, str(tmp_path / "out"))
    for key in ("entropy", "rank", "interventions", "tau"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["json"]) as f:
        assert json.load(f)["divergence"] == report["divergence"]
    assert "oracle output identical to the teacher's on 100% of problems" in format_table(report)
