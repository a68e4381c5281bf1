import asyncio
import logging
import threading

import pytest
import torch

from trl_reasonmaxxer import rewards
from trl_reasonmaxxer.rewards import (
    as_number,
    boxed_format_reward,
    canonical_answer,
    compute_rewards,
    extract_answer,
    extract_answers,
    math_accuracy_reward,
)

from .helpers import alternating_reward


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\text{(A)}{x}} end", r"\text{(A)}{x}"),  # nested braces stay inside
        (r"first \boxed{1} then \boxed{ 2 }", "2"),  # the last one, stripped
        (r"\boxed{3} and a truncated \boxed{\frac{1}{", "3"),  # unclosed box skipped
        (r"our answer is $\boxed 2$.", "2"),  # MATH's brace-less form
        ("reasoning\n#### 1,080\nmore words", "1,080"),
        ("#### 5 then #### 7", "7"),
        (r"\boxed{4} #### 5", "4"),  # \boxed wins over ####
        ("no final answer here", None),
        (r"empty \boxed{} box", None),
        ("####   ", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answers_accepts_both_completion_formats():
    texts = [r"\boxed{1}", "nothing"]
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    assert extract_answers(texts) == extract_answers(conversational) == ["1", None]


def test_bad_completion_format_is_a_clear_error():
    with pytest.raises(ValueError, match="string or a list of chat messages"):
        extract_answers([42])


@pytest.mark.parametrize(
    "answer, number",
    [("1,080", 1080.0), ("-2.50", -2.5), (r"\$18", 18.0), ("7.", 7.0), (".5", 0.5), ("1/2", None), ("x", None)],
)
def test_as_number(answer, number):
    assert as_number(answer) == number


def test_canonical_answer_merges_numeric_forms_only():
    assert canonical_answer("18.0") == canonical_answer("18") == "18"
    assert canonical_answer("1,080") == "1080"
    assert canonical_answer(r"\frac{1}{ 2}") == r"\frac{1}{2}"
    assert canonical_answer(None) is None


@pytest.mark.parametrize(
    "completion, gold, reward",
    [
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{x^2+1}", "1+x^2", 1.0),
        ("#### 1,080", "1080", 1.0),
        (r"\boxed{18.0000001}", "18", 1.0),  # within 1e-6
        (r"\boxed{19}", "18", 0.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        ("I give up", "18", 0.0),  # nothing extracted
        (r"\boxed{5}", "", None),  # gold cannot be parsed
        ("I give up", r"\text{}", None),  # ungradable wins over missing
    ],
)
def test_math_accuracy_reward_cases(completion, gold, reward):
    assert math_accuracy_reward(completions=[completion], solution=[gold]) == [reward]


def test_math_accuracy_reward_both_completion_formats():
    texts = [r"\boxed{\frac{1}{2}}", r"\boxed{3}", "none"]
    gold = ["0.5", "4", "1"]
    expected = [1.0, 0.0, 0.0]
    assert math_accuracy_reward(completions=texts, solution=gold) == expected
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    kwargs = dict(prompts=["p"] * 3, completion_ids=[[1]] * 3, solution=gold)
    assert math_accuracy_reward(completions=conversational, **kwargs) == expected


def test_plain_numbers_skip_math_verify(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("math-verify should not run for plain numbers")

    monkeypatch.setattr(rewards, "parse", forbidden)
    monkeypatch.setattr(rewards, "verify", forbidden)
    assert math_accuracy_reward(completions=["#### 2,125", r"\boxed{-3.5}"], solution=["2125", "-3"]) == [1.0, 0.0]


def test_math_verify_errors_count_as_wrong(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("sympy exploded")

    monkeypatch.setattr(rewards, "verify", broken)
    assert math_accuracy_reward(completions=[r"\boxed{\frac{1}{2}}"], solution=["0.5"]) == [0.0]


def test_overlong_answer_is_wrong_without_grading(monkeypatch):
    parsed = []
    real_parse = rewards.parse
    monkeypatch.setattr(rewards, "parse", lambda text, **kw: parsed.append(text) or real_parse(text, **kw))
    answer = "+".join(["1"] * rewards.MAX_ANSWER_CHARS)
    assert math_accuracy_reward(completions=[rf"\boxed{{{answer}}}"], solution=[r"\frac{1}{2}"]) == [0.0]
    assert parsed == [r"\boxed{\frac{1}{2}}"]  # only the gold was parsed


def test_reward_off_the_main_thread():
    """math-verify's signal timeouts raise off the main thread; the reward must pass None there and still grade."""
    out, errors = [], []

    def work():
        try:
            out.append(
                math_accuracy_reward(
                    completions=[r"\boxed{\frac{1}{2}}", r"\boxed{\sqrt{2}}", "#### 7"], solution=["0.5", "2", "7"]
                )
            )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors and out == [[1.0, 0.0, 1.0]]


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one `solution` per completion"):
        math_accuracy_reward(completions=["a", "b"], solution=["1"])


def test_boxed_format_reward():
    completions = [r"\boxed{1}", r"\boxed{}", "#### 3", [{"role": "assistant", "content": r"x \boxed{y}"}]]
    assert boxed_format_reward(completions=completions) == [1.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------------------ the reward-call convention
# (case ids R1-R17 refer to the reliability audit, as in test_inputs.py)


def test_async_rewards_run_concurrently_even_inside_an_event_loop():
    started = []

    async def slow(completions, **kwargs):
        started.append(len(completions))
        await asyncio.sleep(0.05)
        return [1.0] * len(completions)

    async def failing(completions, **kwargs):
        raise KeyError("solution")

    async def inside_a_loop():  # as in Jupyter, where an event loop already runs
        return compute_rewards([slow, slow], [1.0, 0.5], ["p"] * 2, ["c"] * 2, [[1], [2]], {}, "here")

    totals, per_func = asyncio.run(inside_a_loop())
    assert totals == [1.5, 1.5] and list(per_func) == ["slow", "slow_2"] and started == [2, 2]
    with pytest.raises(RuntimeError, match=r"'failing' raised KeyError.*rollouts are kept in here"):
        compute_rewards([failing], None, ["p"], ["c"], [[1]], {}, "here")


def reward_returning(value):
    def reward(completions, **kwargs):
        return value(len(completions)) if callable(value) else value

    return reward


@pytest.mark.parametrize(
    "returned, error, message",
    [
        (lambda n: ["correct", "wrong"] * (n // 2), TypeError, r"returned 'correct' for completion 0, which is not a"),
        (1.0, TypeError, r"returned 1.0 \(float\); it must return a list with one float"),  # R8
        (lambda n: {i: float(i % 2) for i in range(n)}, TypeError, r"returned a dict; it must return a list"),  # R9
        (None, TypeError, r"returned a NoneType"),
        (lambda n: [float("inf")] + [0.0] * (n - 1), ValueError, r"returned inf for completion 0.*must be finite"),
        (lambda n: [1.0] * (n + 1), ValueError, r"returned 3 rewards for 2 completions"),  # R10
    ],
)
def test_reward_outputs_are_checked_with_the_function_named(returned, error, message):  # R6-R10, R13
    with pytest.raises(error, match=rf"Reward function 'reward' {message}"):
        compute_rewards([reward_returning(returned)], None, ["p"] * 2, ["c"] * 2, [[1], [2]], {}, "here")


def test_reward_outputs_grpo_accepts_are_accepted():  # R1-R5, R7
    n = 4
    outputs = [
        lambda: (float(i % 2 == 0) for i in range(n)),  # a generator (R7)
        lambda: torch.tensor([[1.0], [0.0], [1.0], [0.0]]),  # [N, 1]
        lambda: ["1", "0", "1.0", None],  # numeric strings and None
        lambda: [True, False, 1, 0],
    ]
    for make in outputs:
        totals, _ = compute_rewards(
            [lambda completions, make=make, **kwargs: make()], None, ["p"] * n, ["c"] * n, [[1]] * n, {}, "here"
        )
        assert totals[:2] == [1.0, 0.0]


def test_one_reward_function_returning_only_none_is_allowed_with_others(caplog):  # R17
    def ungradable(completions, **kwargs):
        return [None] * len(completions)

    with caplog.at_level(logging.WARNING, logger="trl_reasonmaxxer.rewards"):
        totals, per_func = compute_rewards(
            [alternating_reward, ungradable], None, ["p"] * 2, ["c"] * 2, [[1], [2]], {"solution": ["1", "2"]}, "x"
        )
    assert totals == [1.0, 0.0] and "'ungradable' returned None for every completion" in caplog.text
    kwargs = {"solution": ["1", "2"], "trainer_state": None, "log_metric": None, "log_extra": None}
    with pytest.raises(ValueError, match=r"only None/NaN for all 2 completions.*columns it reads \(solution\)"):
        compute_rewards([ungradable], None, ["p"] * 2, ["c"] * 2, [[1], [2]], kwargs, "x")
