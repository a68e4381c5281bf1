import threading

import pytest

from trl_reasonmaxxer import rewards
from trl_reasonmaxxer.rewards import (
    as_number,
    boxed_format_reward,
    canonical_answer,
    extract_answer,
    extract_answers,
    math_accuracy_reward,
)


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
