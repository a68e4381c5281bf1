r"""Reward functions and GRPOTrainer's reward-call convention, one home for both.

Binary math rewards with GRPOTrainer's reward-function signature: every reward function takes ``completions`` (plain strings, or conversational
``[[{"role": "assistant", "content": ...}], ...]``) plus the dataset columns as keyword arguments, and returns
one ``float | None`` per completion, so the same functions grade rollouts for ReasonMaxxer, GRPO baselines and
evaluation.

Why not ``trl.rewards.accuracy_reward``: it accepts only conversational completions, takes math-verify's *first*
match rather than the *last* ``\boxed{}`` (the paper's extractor, method.md §Step 2), does not read GSM8K-style
``#### n`` answers, and parses the whole completion (slow on long rollouts). Off the main thread it runs with no
time bound at all; here answers are capped in length first (:data:`MAX_ANSWER_CHARS`).

The calling convention (:func:`resolve_reward_funcs` for names, :func:`compute_rewards` for the call and the checks
of what comes back) is the one the offline phase and evaluation both use, so a reward function behaves the same in
training and in evaluation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch
from math_verify import parse, verify
from trl.data_utils import is_conversational


logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------------------
# GRPOTrainer's reward-call convention

# keyword arguments the trainer passes to reward functions besides the dataset columns (GRPOTrainer's)
TRAINER_REWARD_KWARGS = ("trainer_state", "log_metric", "log_extra")


def resolve_reward_func(func) -> Callable:
    """A callable reward function, from a callable or a name: ``module.func``, or a function of
    ``trl_reasonmaxxer.rewards`` / ``trl.rewards``."""
    reward_models = (
        "Reward models are not supported yet: wrap the model in a function that returns one float per completion."
    )
    if isinstance(func, torch.nn.Module):
        raise ValueError(f"Reward function {type(func).__name__} is a model. {reward_models}")
    if callable(func):
        return func
    if isinstance(func, str):
        if "/" in func or os.path.isdir(func):
            raise ValueError(
                f"Reward function {func!r} looks like a reward model (a Hub id or a folder). {reward_models}"
            )
        if "." in func:
            module, _, name = func.rpartition(".")
            try:
                found = getattr(importlib.import_module(module), name, None)
            except ImportError as err:
                raise ValueError(
                    f"Reward function {func!r}: cannot import module {module!r} ({err}). Pass a dotted path "
                    "'package.module.function' importable here (is the module on PYTHONPATH?)."
                ) from err
            if not callable(found):
                what = "has no attribute" if found is None else f"has a non-callable {type(found).__name__}"
                raise ValueError(f"Reward function {func!r}: module {module!r} {what} {name!r}; name a function.")
            return found
        for module in ("trl_reasonmaxxer.rewards", "trl.rewards"):
            found = getattr(importlib.import_module(module), func, None)
            if callable(found):
                return found
    raise ValueError(
        f"Reward function {func!r} is not supported: pass a callable, a dotted path 'package.module.function', or "
        "the name of a function in trl_reasonmaxxer.rewards or trl.rewards. Reward models are not supported yet."
    )


def resolve_reward_funcs(reward_funcs) -> list[Callable]:
    """GRPOTrainer's ``reward_funcs`` (a function or a name, a list of them, or None) as a list of callables."""
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs] if reward_funcs else []
    return [resolve_reward_func(f) for f in funcs]


def reward_function_name(func) -> str:
    func = getattr(func, "func", func)  # functools.partial
    return getattr(func, "__name__", type(func).__name__)


def reward_function_names(funcs: Sequence[Callable]) -> list[str]:
    """One distinct name per function (``rewards/<name>`` columns): repeated names get ``_2``, ``_3``, ..."""
    names, seen = [], Counter()
    for func in funcs:
        name = reward_function_name(func)
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def _run_awaitables(awaitables: list) -> list:
    """Await the coroutines of async reward functions concurrently, as GRPOTrainer does; in a thread of its own,
    so it works where an event loop already runs (Jupyter). Exceptions are returned in place of results."""

    async def gather():
        return await asyncio.gather(*awaitables, return_exceptions=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, gather()).result()


def _reward_call_error(name: str, err: BaseException, cache_hint: str | None) -> RuntimeError:
    kept = (
        f" The rollouts are kept in {cache_hint}; fix the function and run again: nothing will be generated twice."
        if cache_hint is not None
        else ""
    )
    return RuntimeError(f"Reward function {name!r} raised {type(err).__name__}: {err}.{kept}")


def reward_values(name: str, out, num_completions: int) -> list[float]:
    """A reward function's output as one float per completion (None and NaN read as NaN), or one clear error.

    Accepts what GRPOTrainer accepts (any sequence or iterable of numbers or None: lists, tuples, generators, numpy
    arrays, torch tensors including ``[N, 1]``); refuses a single number, a string or a mapping (whose keys would be
    read as rewards), values that are not numbers, and infinite rewards, which would turn advantages into NaN.
    """
    fix = f"it must return a list with one float (or None) per completion, {num_completions} here"
    if out is None or isinstance(out, (str, bytes, Mapping)):
        raise TypeError(f"Reward function {name!r} returned a {type(out).__name__}; {fix}.")
    try:
        values = list(out)
    except TypeError:
        raise TypeError(f"Reward function {name!r} returned {out!r:.60} ({type(out).__name__}); {fix}.") from None
    if len(values) != num_completions:
        raise ValueError(
            f"Reward function {name!r} returned {len(values)} rewards for {num_completions} completions; it must "
            "return one float (or None) per completion."
        )
    rewards = []
    for i, value in enumerate(values):
        try:
            reward = float("nan") if value is None else float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"Reward function {name!r} returned {value!r:.60} for completion {i}, which is not a number; {fix} "
                "(None for a completion it cannot grade)."
            ) from None
        if math.isinf(reward):
            raise ValueError(
                f"Reward function {name!r} returned {reward} for completion {i}. Rewards must be finite (advantages "
                "are z-scores within a prompt's rollouts); return None for a completion it cannot grade."
            )
        rewards.append(reward)
    return rewards


def compute_rewards(
    reward_funcs: Sequence[Callable],
    reward_weights: Sequence[float] | None,
    prompts: list,
    completions: list,
    completion_ids: list[list[int]],
    reward_kwargs: dict[str, list],
    cache_hint: str | None = None,
    allow_ungraded: bool = False,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of reward functions with TRL's GRPOTrainer calling convention.

    Each function is called as ``f(prompts=, completions=, completion_ids=, **reward_kwargs)`` (``async``
    functions are awaited concurrently, as in GRPO) and must return one float (or None, read as NaN) per completion;
    each gets its own copy of the lists, so one that edits them cannot change what the others (or the pool) see. A
    row where every function returned None gets a NaN reward, which selection ignores; when every row is NaN that is
    an error, unless ``allow_ungraded`` (evaluation counts ungradable completions instead). ``cache_hint`` says where
    the rollouts are kept, for the error messages. Returns the totals and each function's rewards by name.
    """
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(
            f"reward_weights has {len(weights)} entries but there are {len(reward_funcs)} reward functions; "
            "give one weight per function."
        )
    names = reward_function_names(reward_funcs)
    outputs, pending = {}, {}
    for name, func in zip(names, reward_funcs):
        try:
            out = func(
                prompts=list(prompts),
                completions=list(completions),
                completion_ids=[list(ids) for ids in completion_ids],
                **{key: list(value) if isinstance(value, list) else value for key, value in reward_kwargs.items()},
            )
        except Exception as err:
            raise _reward_call_error(name, err, cache_hint) from err
        (pending if inspect.isawaitable(out) else outputs)[name] = out
    if pending:
        for name, out in zip(pending, _run_awaitables(list(pending.values()))):
            if isinstance(out, BaseException):
                raise _reward_call_error(name, out, cache_hint) from out
            outputs[name] = out
    per_func = {name: reward_values(name, outputs[name], len(completions)) for name in names}
    columns = torch.tensor(list(per_func.values()), dtype=torch.float64)  # [F, N]
    weighted = columns * torch.tensor(weights, dtype=torch.float64)[:, None]
    ungraded = columns.isnan().all(0)
    totals = torch.where(ungraded, float("nan"), weighted.nansum(0))
    if bool(ungraded.all()) and not allow_ungraded:
        columns_read = sorted(k for k in reward_kwargs if k not in TRAINER_REWARD_KWARGS)
        who = f"Reward function {names[0]!r}" if len(names) == 1 else f"The reward functions {', '.join(names)}"
        raise ValueError(
            f"{who} returned only None/NaN for all {len(completions)} completions. Check the dataset columns it "
            f"reads ({', '.join(columns_read) or 'none'}) and its answer format. The rollouts are kept in "
            f"{cache_hint}."
        )
    for name, values in per_func.items():
        if len(names) > 1 and all(math.isnan(v) for v in values):
            logger.warning("Reward function %r returned None for every completion; the others grade them.", name)
    return totals.tolist(), per_func


def call_reward_funcs(
    reward_funcs: Sequence[Callable],
    rows: Sequence[Mapping],
    completion_ids: Sequence[Sequence[int]],
    tokenizer,
    reward_weights: Sequence[float] | None = None,
    trainer_kwargs: Mapping | None = None,
    cache_hint: str | None = None,
    allow_ungraded: bool = False,
) -> tuple[list[str], list[float], dict[str, list[float]]]:
    """Decode completions and reward them as GRPOTrainer does; the one convention of training and evaluation.

    ``rows[i]`` is the dataset row completion ``i`` answers: its ``prompt`` and the columns reward functions read.
    Completions are conversational (one assistant message each) when the prompts are chat messages, by TRL's
    ``is_conversational`` rule on the first prompt; every other column (but ``completion`` and ``completion_ids``)
    is passed as a keyword argument, one value per completion, together with ``trainer_kwargs``
    (:data:`TRAINER_REWARD_KWARGS`). Returns the decoded texts, the weighted totals and each function's rewards
    (:func:`compute_rewards`).
    """
    prompts = [row["prompt"] for row in rows]
    texts = tokenizer.batch_decode([list(ids) for ids in completion_ids], skip_special_tokens=True)
    conversational = bool(prompts) and is_conversational({"prompt": prompts[0]})
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    skipped = ("prompt", "completion", "completion_ids")
    columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else {}) if key not in skipped}
    totals, per_func = compute_rewards(
        reward_funcs,
        reward_weights,
        prompts,
        completions,
        completion_ids,
        {**columns, **(trainer_kwargs or {})},
        cache_hint,
        allow_ungraded,
    )
    return texts, totals, per_func
