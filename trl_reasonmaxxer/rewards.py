r"""Binary math rewards with GRPOTrainer's reward-function signature.

Every reward function takes ``completions`` (plain strings, or conversational
``[[{"role": "assistant", "content": ...}], ...]``) plus the dataset columns as keyword arguments, and returns
one ``float | None`` per completion, so the same functions grade rollouts for ReasonMaxxer, GRPO baselines and
evaluation.

Why not ``trl.rewards.accuracy_reward``: it accepts only conversational completions, takes math-verify's *first*
match rather than the *last* ``\boxed{}`` (the paper's extractor, method.md §Step 2), does not read GSM8K-style
``#### n`` answers, and parses the whole completion (slow on long rollouts). Off the main thread it runs with no
time bound at all; here answers are capped in length first (:data:`MAX_ANSWER_CHARS`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from math_verify import parse, verify


# math-verify's limits on the main thread (signal-based, so unusable elsewhere), in seconds.
PARSING_TIMEOUT = 5
VERIFY_TIMEOUT = 5
# A final answer longer than this is model rambling; grading it could only hang sympy (off the main thread
# math-verify has no timeout), so it counts as wrong.
MAX_ANSWER_CHARS = 300

_BOXED = re.compile(r"\\boxed\s*")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")


def completion_text(completion: str | list[dict]) -> str:
    """The text of one completion, given as a string or as a one-message conversational list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1].get("content") or ""
    raise ValueError(
        "A completion must be a string or a list of chat messages like [{'role': 'assistant', 'content': ...}], "
        f"got {completion!r:.80}."
    )


def _boxed_contents(text: str) -> list[str]:
    r"""Contents of every complete ``\boxed{...}`` (balanced braces) or ``\boxed x`` in ``text``, in order."""
    found = []
    for match in _BOXED.finditer(text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth = 0
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    found.append(text[start + 1 : i])
                    break
        elif match.group() != "\\boxed":  # MATH writes "\boxed 2": the answer is the next token
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                found.append(token.group())
    return found


def extract_answer(text: str) -> str | None:
    r"""The final answer in ``text``: the last complete ``\boxed{}``, else the line after the last ``####``.

    Returns None when neither holds a non-empty answer (that is what the "extraction rate" metric counts); an
    unclosed ``\boxed{`` from a truncated rollout is skipped.
    """
    for content in reversed(_boxed_contents(text)):
        if content.strip():
            return content.strip()
    if "####" in text:
        after = text.rsplit("####", 1)[1].strip()
        answer = after.splitlines()[0].strip() if after else ""
        return answer or None
    return None


def extract_answers(completions: Sequence[str | list[dict]]) -> list[str | None]:
    """:func:`extract_answer` for each completion (strings or conversational)."""
    return [extract_answer(completion_text(c)) for c in completions]


def as_number(answer: str) -> float | None:
    r"""``answer`` as a float when it is a plain number (``"1,080"``, ``"-2.50"``, ``"\$18"``, ``"7."``), else
    None."""
    s = answer.strip().removeprefix("\\$").removeprefix("$").removesuffix("$").strip().rstrip(".")
    if not _NUMBER.fullmatch(s):
        return None
    return float(s.replace(",", ""))


def canonical_answer(answer: str | None) -> str | None:
    r"""A vote key for majority voting: plain numbers in one form (``"18.0"``, ``"18"`` → ``"18"``), other
    answers with whitespace removed. Equivalent non-numeric forms (``0.5`` vs ``\frac{1}{2}``) still differ."""
    if answer is None:
        return None
    number = as_number(answer)
    if number is not None:
        return str(int(number)) if number.is_integer() else repr(number)
    return re.sub(r"\s+", "", answer)


def _numbers_equal(a: float, b: float) -> bool:
    """Equal within 1e-6, relative for large magnitudes (the paper's numeric tolerance)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _timeouts() -> tuple[int | None, int | None]:
    """(parsing, verify) timeouts: math-verify's signal alarms raise off the main thread, so none there."""
    if threading.current_thread() is threading.main_thread():
        return PARSING_TIMEOUT, VERIFY_TIMEOUT
    return None, None


def _parse_boxed(answer: str, parsing_timeout: int | None) -> list:
    r"""math-verify's parse of an extracted answer (re-boxed so its boxed extractor, the most robust, runs)."""
    try:
        return parse("\\boxed{" + answer + "}", parsing_timeout=parsing_timeout)
    except Exception:  # math-verify can raise on odd LaTeX; grading must never crash a training run
        return []


def grade_answer(answer: str | None, gold: str) -> float | None:
    """1.0 if ``answer`` equals ``gold`` (numerically, else by math-verify), 0.0 if not or missing, None when
    ``gold`` cannot be parsed (GRPOTrainer then skips that reward)."""
    gold_number = as_number(gold)
    parsing_timeout, verify_timeout = _timeouts()
    gold_parsed = None
    if gold_number is None:
        gold_parsed = _parse_boxed(gold, parsing_timeout)
        if not gold_parsed:
            return None
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    answer_number = as_number(answer)
    if gold_number is not None and answer_number is not None:
        return float(_numbers_equal(answer_number, gold_number))
    if gold_parsed is None:
        gold_parsed = _parse_boxed(gold, parsing_timeout)
    answer_parsed = _parse_boxed(answer, parsing_timeout)
    if not answer_parsed:
        return 0.0
    try:
        return float(verify(gold_parsed, answer_parsed, timeout_seconds=verify_timeout))
    except Exception:
        return 0.0


def math_accuracy_reward(
    completions: Sequence[str | list[dict]], solution: Sequence[str], **kwargs
) -> list[float | None]:
    r"""1.0 when a completion's final answer (last ``\boxed{}``, else ``#### n``) equals ``solution``, 0.0 when
    it is wrong or missing, None when the gold answer cannot be parsed.

    Plain numbers are compared numerically (tolerance 1e-6) without math-verify; anything else goes through
    math-verify (``\frac{1}{2}`` equals ``0.5``) with timeouts on the main thread, none elsewhere (signals only
    work on the main thread). Any math-verify error counts as wrong.
    """
    if len(completions) != len(solution):
        raise ValueError(
            f"Got {len(completions)} completions but {len(solution)} solutions; pass one `solution` per completion."
        )
    return [grade_answer(answer, str(gold)) for answer, gold in zip(extract_answers(completions), solution)]


def boxed_format_reward(completions: Sequence[str | list[dict]], **kwargs) -> list[float]:
    r"""1.0 when a completion contains a complete, non-empty ``\boxed{}`` answer, else 0.0."""
    return [float(any(c.strip() for c in _boxed_contents(completion_text(c)))) for c in completions]
