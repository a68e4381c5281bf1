"""Input validation: every argument the trainer takes is checked before any work, and refused with one message that
names the problem, the rows or values at fault, and the fix.

Pure functions of their arguments where possible (the datasets, the config, the reward functions); the output_dir
lock and the checkpoint check read the file system. The trainer calls them in its constructor and in ``train()``;
the offline phase calls :func:`check_prompt_lengths` once the prompts are tokenized.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections import defaultdict

import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from transformers.trainer_utils import IntervalStrategy

from .cache import POOL_COLUMNS


logger = logging.getLogger(__name__)


def check_grpo_only_arguments(
    args, tools=None, rollout_func=None, environment_factory=None, reward_processing_classes=None, eval_dataset=None
) -> None:
    """GRPOTrainer arguments with no ReasonMaxxer meaning: agentic rollouts are refused; reward models' processing
    classes, an ``eval_dataset`` and an ``eval_strategy`` are reported once (``eval_strategy`` is set to ``"no"``)."""
    for argument, value in (
        ("tools", tools),
        ("rollout_func", rollout_func),
        ("environment_factory", environment_factory),
    ):
        if value is not None:
            raise ValueError(f"`{argument}` is a GRPO feature for agentic rollouts; ReasonMaxxer does not support it.")
    if reward_processing_classes is not None:
        logger.warning("reward_processing_classes has no effect: ReasonMaxxer supports reward functions only.")
    if eval_dataset is not None:
        logger.warning(
            "eval_dataset is not used during training; evaluate the adapter with trl_reasonmaxxer.evaluation."
        )
    if args.eval_strategy != "no":  # Trainer would refuse it without an eval_dataset, which is never used here
        logger.warning(
            "eval_strategy=%r has no effect: ReasonMaxxer does not evaluate during training, so it is set to "
            "'no'. Evaluate the adapter with `trl-reasonmaxxer eval --adapter %s`.",
            getattr(args.eval_strategy, "value", args.eval_strategy),
            args.output_dir,
        )
        args.eval_strategy = IntervalStrategy.NO
        args.load_best_model_at_end = False


def check_datasets(train_dataset, rollout_dataset) -> bool:
    """The type and columns of ``rollout_dataset`` (if given), and ``train_dataset`` when rewards are still to be
    computed; returns whether they are (no ``rollout_dataset``, or one without a ``reward`` column)."""
    if rollout_dataset is not None:
        check_rollout_dataset(rollout_dataset, vocab_size=None, num_prompts=None)  # type and columns
    needs_rewards = rollout_dataset is None or "reward" not in rollout_dataset.column_names
    if needs_rewards:
        check_prompt_dataset(train_dataset)
    return needs_rewards


def check_reward_funcs(reward_funcs: list, reward_weights, needs_rewards: bool) -> None:
    """At least one reward function when rewards are to be computed, one weight per function; a warning when a
    rewarded ``rollout_dataset`` makes them unused."""
    if needs_rewards and not reward_funcs:
        raise ValueError("reward_funcs is required: pass at least one reward function (e.g. math_accuracy_reward).")
    if not needs_rewards and reward_funcs:
        logger.warning(
            "rollout_dataset already has a `reward` column, so reward_funcs are not called. To reward the pool "
            "with them, pass rollout_dataset.remove_columns('reward')."
        )
    if needs_rewards and reward_weights is not None and len(reward_weights) != len(reward_funcs):
        raise ValueError(
            f"reward_weights has {len(reward_weights)} entries but there are {len(reward_funcs)} reward "
            "functions; give one weight per function."
        )


def _rows(indices: list[int], limit: int = 10) -> str:
    """``[3, 7, 9]``, or the first ``limit`` and how many more."""
    shown = ", ".join(map(str, indices[:limit]))
    return f"[{shown}, ... and {len(indices) - limit} more]" if len(indices) > limit else f"[{shown}]"


def invalid_prompts(prompts) -> dict[str, list[int]]:
    """Row indices of the prompts nothing can be sampled from, by problem (empty when all are fine).

    A prompt is a non-blank string or a non-empty list of chat messages, each a dict with a ``role`` and a
    ``content`` (a string or a list of content parts), not all blank.
    """
    problems: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt.strip():
                problems["are empty or whitespace-only"].append(i)
        elif isinstance(prompt, (list, tuple)):
            if not prompt:
                problems["are empty lists of chat messages"].append(i)
            elif not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
                problems["hold chat messages without a 'role' and a 'content' key"].append(i)
            elif not all(isinstance(m["content"], (str, list)) for m in prompt):
                problems["hold chat messages whose 'content' is neither a string nor a list of parts"].append(i)
            elif not any(m["content"].strip() if isinstance(m["content"], str) else m["content"] for m in prompt):
                problems["are chat messages with only empty contents"].append(i)
        else:
            problems[f"are {type(prompt).__name__}, not a string or a list of chat messages"].append(i)
    return dict(problems)


def check_prompt_dataset(dataset) -> None:
    if dataset is None:
        raise ValueError("train_dataset is required: a datasets.Dataset with a `prompt` column.")
    if isinstance(dataset, DatasetDict):
        raise TypeError(
            f"train_dataset is a DatasetDict with splits {list(dataset)}; pass one split, e.g. "
            f"train_dataset=dataset[{next(iter(dataset), 'train')!r}]."
        )
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "train_dataset is an IterableDataset (streaming): ReasonMaxxer samples every prompt up front and needs a "
            "datasets.Dataset. Load it without streaming=True, or take the rows you need with "
            "Dataset.from_list(list(dataset.take(n)))."
        )
    if isinstance(dataset, (list, tuple)):
        example = (
            "Dataset.from_dict({'prompt': prompts})"
            if dataset and isinstance(dataset[0], str)
            else ("Dataset.from_list(rows)")
        )
        raise TypeError(
            f"train_dataset must be a datasets.Dataset, got a {type(dataset).__name__}; build one with {example}."
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(f"train_dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"train_dataset has no `prompt` column (columns: {dataset.column_names}). Rename your question column "
            "to `prompt` (a string, or a list of chat messages) as GRPOTrainer expects."
        )
    if len(dataset) == 0:
        raise ValueError("train_dataset is empty: ReasonMaxxer needs prompts to sample rollouts from.")
    problems = invalid_prompts(dataset["prompt"])
    if problems:
        found = "; ".join(f"rows {_rows(rows)} {problem}" for problem, rows in problems.items())
        bad = sorted(i for rows in problems.values() for i in rows)
        raise ValueError(
            f"train_dataset has {len(bad)} prompt{'s' if len(bad) > 1 else ''} nothing can be sampled from: {found}. "
            "A prompt is a non-empty string or a list of chat messages like [{'role': 'user', 'content': '...'}]. "
            "Fix or drop those rows first, e.g. with train_dataset.select(rows to keep)."
        )


def check_rollout_dataset(dataset, vocab_size: int | None, num_prompts: int | None) -> None:
    """A ``rollout_dataset`` passed in is checked before use: its type, columns, token ids (within the model's
    vocabulary), per-token scores (one per completion token) and, when rewards are still to be computed, prompt
    indices (rows of ``train_dataset``). Without ``vocab_size``, only the type and columns."""
    if not isinstance(dataset, Dataset):
        hint = " (build it with Dataset.from_list(rows))" if isinstance(dataset, (list, tuple)) else ""
        raise TypeError(f"rollout_dataset must be a datasets.Dataset, got {type(dataset).__name__}{hint}.")
    missing = [c for c in POOL_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"rollout_dataset has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} (columns: "
            f"{dataset.column_names}). Pass a pool built by ReasonMaxxerTrainer.build_rollout_dataset(), with "
            f"{', '.join(POOL_COLUMNS)} and either `reward` or reward_funcs."
        )
    if len(dataset) == 0 or vocab_size is None:
        return  # selection reports an empty pool
    table = dataset.data
    for column in ("prompt_ids", "completion_ids"):
        flat = pc.list_flatten(table.column(column))
        if len(flat) and (pc.min(flat).as_py() < 0 or pc.max(flat).as_py() >= vocab_size):
            raise ValueError(
                f"rollout_dataset's {column} hold token ids outside this model's vocabulary [0, {vocab_size}) "
                f"(min {pc.min(flat).as_py()}, max {pc.max(flat).as_py()}): the pool was made with another "
                "tokenizer. Build the pool with this model's tokenizer."
            )
    if "entropy" in dataset.column_names or "logps" in dataset.column_names:
        if "entropy" not in dataset.column_names or "logps" not in dataset.column_names:
            raise ValueError("rollout_dataset has only one of `entropy` and `logps`; pass both (or neither).")
        lengths = pc.list_value_length(table.column("completion_ids"))
        for column in ("entropy", "logps"):
            values = table.column(column)
            scored = pc.is_valid(values)
            mismatch = pc.and_(scored, pc.not_equal(pc.list_value_length(values), lengths))
            if pc.any(mismatch).as_py():
                rows = [i for i, bad in enumerate(mismatch.to_pylist()) if bad]
                raise ValueError(
                    f"rollout_dataset rows {_rows(rows)}: `{column}` and `completion_ids` differ in length (one "
                    "score per completion token is needed). Drop the `entropy` and `logps` columns to have them "
                    "scored again."
                )
    if "reward" not in dataset.column_names and num_prompts is not None:
        outside = [i for i, p in enumerate(dataset["prompt_index"]) if not 0 <= p < num_prompts]
        if outside:
            raise ValueError(
                f"rollout_dataset rows {_rows(outside)} have a prompt_index outside train_dataset (rows 0 to "
                f"{num_prompts - 1}): rewards read the prompt and columns of that row. Pass the train_dataset the "
                "pool was built from."
            )


def check_prompt_lengths(prompt_ids: list[list[int]], max_completion_length: int | None, limit: int | None) -> None:
    """Prompts that tokenize to nothing, or that with ``max_completion_length`` new tokens exceed the positions of
    a model with learned position embeddings, are named before ``generate`` fails on them."""
    empty = [i for i, ids in enumerate(prompt_ids) if not ids]
    if empty:
        raise ValueError(
            f"train_dataset rows {_rows(empty)} tokenize to no tokens, so there is nothing to sample from. Fix or drop "
            "those prompts."
        )
    if limit is None:
        return
    budget = limit - (max_completion_length or 0)
    long = [i for i, ids in enumerate(prompt_ids) if len(ids) > budget]
    if long:
        longest = max(len(prompt_ids[i]) for i in long)
        raise ValueError(
            f"train_dataset rows {_rows(long)} are too long for this model: with max_completion_length="
            f"{max_completion_length}, a prompt may have at most {budget} tokens (the model has {limit} learned "
            f"positions), and the longest has {longest}. Drop or shorten those prompts, or lower "
            "max_completion_length."
        )


def learned_position_limit(model) -> int | None:
    """How many positions a model with learned absolute position embeddings (GPT-2, OPT, ...) can read; None for
    relative schemes (RoPE, ALiBi), where longer inputs only degrade."""
    names = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)
    }
    if not names & {"wpe", "embed_positions", "position_embeddings"}:
        return None
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def complete_checkpoint(path: str) -> bool:
    """Whether a checkpoint folder was fully written: Trainer writes ``trainer_state.json`` last."""
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def resolve_resume_checkpoint(value, output_dir: str):
    """``resume_from_checkpoint`` with ``True`` replaced by the newest *complete* checkpoint of ``output_dir``.

    A run killed while saving leaves a checkpoint without ``trainer_state.json``: Trainer would pick it and fail
    (or resume without its optimizer state). It is skipped with a warning; a path to one is a clear error.
    """
    if value is None or value is False:
        return None
    found = []
    if os.path.isdir(output_dir):
        found = sorted(
            (int(m.group(1)), os.path.join(output_dir, name))
            for name in os.listdir(output_dir)
            if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(output_dir, name))
        )
    complete = [path for _, path in found if complete_checkpoint(path)]
    if value is True:
        if not complete:
            partial_ = f" ({', '.join(p for _, p in found)} are incomplete)" if found else ""
            raise ValueError(
                f"resume_from_checkpoint=True but output_dir {output_dir} has no complete checkpoint to resume "
                f"from{partial_}. Train from scratch (resume_from_checkpoint=None) or pass a checkpoint folder."
            )
        newer = [path for step, path in found if path not in complete and step > int(complete[-1].rsplit("-", 1)[1])]
        if newer:
            logger.warning(
                "Skipping incomplete checkpoint%s %s (no readable trainer_state.json: the run was probably stopped "
                "while saving); resuming from %s.",
                "s" if len(newer) > 1 else "",
                ", ".join(newer),
                complete[-1],
            )
        return complete[-1]
    if isinstance(value, (str, os.PathLike)) and os.path.isdir(value) and not complete_checkpoint(value):
        instead = f"Resume from {complete[-1]}, the newest complete one, or" if complete else "Either"
        raise ValueError(
            f"Checkpoint {value} is incomplete: it has no readable trainer_state.json (the run was probably stopped "
            f"while saving it). {instead} delete it and pass resume_from_checkpoint=True."
        )
    return value


def check_quantization_supported(has_bitsandbytes: bool, has_cuda: bool) -> None:
    """One clear error when a quantized (QLoRA) base cannot be loaded here."""
    needs = (("the bitsandbytes package", has_bitsandbytes), ("a CUDA GPU", has_cuda))
    missing = [what for what, ok in needs if not ok]
    if missing:
        raise ValueError(
            f"Loading the base model in 4/8 bits (QLoRA: load_in_4bit / quantization_config) needs bitsandbytes and a "
            f"CUDA GPU, and {' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} missing here. Install with "
            "`pip install 'trl-reasonmaxxer[quantization]'` on a GPU machine, or drop --load_in_4bit / "
            "quantization_config to train the LoRA on the unquantized base (bf16 on GPU, float32 on CPU)."
        )


# In output_dir while a run uses it; "_*" keeps it out of Hub uploads (hub.HUB_IGNORE_PATTERNS)
LOCK_FILE = "_reasonmaxxer.lock"
_held_locks: dict[str, int] = {}  # lock path -> trainers of this process holding it


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux), which tells a live run from a new process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _lock_holder_running(owner: dict) -> bool:
    """Whether the process named in a lock file still runs (one on another host is assumed to)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)


def _unwritable(output_dir: str, err: OSError) -> OSError:
    return type(err)(
        err.errno,
        f"output_dir {output_dir!r} is not writable ({err.strerror or err}): the rollout cache, checkpoints and the "
        "trained adapter are saved there, so the run would be lost at its first save. Choose a writable output_dir.",
    )


def acquire_output_dir_lock(output_dir: str) -> str:
    """Claim ``output_dir`` for this process before any work: refuses a directory that cannot be written and one
    that another live run uses (two runs would write the same checkpoints and race on the rollout cache); takes
    over the lock of a run that is no longer running. Returns the lock file's path; it is removed when the last
    trainer of this process holding it is garbage collected, or at exit."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise _unwritable(output_dir, err) from err
    path = os.path.abspath(os.path.join(output_dir, LOCK_FILE))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                owner = {}
            if not isinstance(owner, dict):
                owner = {}
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                _held_locks[path] = _held_locks.get(path, 0) + 1
                return path
            if owner and _lock_holder_running(owner):
                since = f", started {owner['time']}" if owner.get("time") else ""
                raise RuntimeError(
                    f"output_dir {output_dir!r} is in use by another ReasonMaxxer run (pid {owner.get('pid')} on "
                    f"{owner.get('host')}{since}): two runs there would overwrite each other's checkpoints and "
                    f"rollout cache. Wait for that run to finish, stop it (kill {owner.get('pid')}), or give this run "
                    f"another output_dir. If no such run is going on, delete {path}."
                ) from None
            logger.warning(
                "Taking over %s, left by a run that is no longer running (pid %s on %s).",
                path,
                owner.get("pid"),
                owner.get("host"),
            )
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        except OSError as err:
            raise _unwritable(output_dir, err) from err
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**me, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        _held_locks[path] = 1
        return path
    raise RuntimeError(f"Could not take the lock {path}: other processes keep creating it. Use another output_dir.")


def release_output_dir_lock(path: str) -> None:
    """Drop one hold on a lock from :func:`acquire_output_dir_lock`; the file goes with the last one."""
    if path not in _held_locks:
        return
    _held_locks[path] -= 1
    if _held_locks[path] > 0:
        return
    del _held_locks[path]
    try:
        with open(path, encoding="utf-8") as f:
            mine = json.load(f).get("pid") == os.getpid()
    except (OSError, ValueError, AttributeError):
        mine = False
    if mine:
        with contextlib.suppress(OSError):
            os.remove(path)
