"""The offline phase: rollouts → rewards → (selection) → scoring, cached per chunk so it resumes after a crash.

The cache lives in ``<output_dir>/rollouts/<fingerprint>/``: ``generations/`` and ``scores/`` hold JSON-lines
chunks written atomically, and ``pool/`` the latest complete pool as a ``datasets.Dataset`` (one row per rollout).
Generations and scores depend only on the model, the prompt ids and the sampling settings, which the
fingerprint covers; rewards are cheap and are recomputed on every run, so reward functions can change freely.

With several processes, each one generates the chunks of its :func:`shard` and scores its share of the rows; a
chunk is written by the one process that owns it, so processes never write the same file, and since chunk
boundaries do not depend on the number of processes, neither does the pool.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import torch
from datasets import Dataset


POOL_COLUMNS = ("prompt_index", "prompt_ids", "completion_ids", "truncated")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Identifies the weights cheaply: config, parameter count and a checksum of a few tensors."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = [p for n, p in base.named_parameters() if "lora_" not in n]
    probe = [float(p.detach().float().sum()) for p in params[:: max(1, len(params) // 8)]]
    return fingerprint(base.config.to_json_string(use_diff=False), sum(p.numel() for p in params), probe)


class ChunkCache:
    """Atomic JSON-lines chunks under one directory; a missing ``root`` disables caching."""

    def __init__(self, root: str | None):
        self.root = root

    def _path(self, kind: str, index: int) -> str:
        return os.path.join(self.root, kind, f"chunk-{index:05d}.jsonl")

    def has(self, kind: str, index: int) -> bool:
        return self.root is not None and os.path.exists(self._path(kind, index))

    def load(self, kind: str, index: int) -> list[dict] | None:
        if not self.has(kind, index):
            return None
        with open(self._path(kind, index)) as f:
            return [json.loads(line) for line in f]

    def load_all(self, kind: str) -> list[dict]:
        """The rows of every complete chunk of ``kind``, in file-name order."""
        folder = os.path.join(self.root, kind) if self.root is not None else None
        if folder is None or not os.path.isdir(folder):
            return []
        rows = []
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".jsonl")):
            with open(os.path.join(folder, name)) as f:
                rows.extend(json.loads(line) for line in f)
        return rows

    def save(self, kind: str, index: int, rows: list[dict]) -> None:
        if self.root is None:
            return
        path = self._path(kind, index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # write then rename: a killed run never leaves a half chunk that would be taken as done
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)


def default_chunk_size(prompts_per_call: int, minimum: int = 8) -> int:
    """The smallest multiple of ``prompts_per_call`` that is at least ``minimum`` prompts: chunks that end on a
    ``generate`` call boundary (a chunk of 8 with 5 prompts per call costs 2 calls; one of 10 costs 2 as well)."""
    if prompts_per_call < 1:
        raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}.")
    return -(-minimum // prompts_per_call) * prompts_per_call


def chunked(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def shard(items: Sequence, rank: int, world: int) -> list:
    """Process ``rank``'s contiguous share of ``items`` (sizes differ by at most one): concatenating the shares in
    rank order gives ``items`` back, so a gathered result keeps the single-process order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}.")
    n = len(items)
    return list(items[rank * n // world : (rank + 1) * n // world])


def generate_pool(
    generate: Callable[[list[int]], list[list[dict]]],
    prompt_ids: Sequence[Sequence[int]],
    cache: ChunkCache,
    chunk_size: int,
    progress: Callable[[int, int], None] | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[dict]:
    """Rollout rows for the prompts of process ``rank``'s chunks (all of them with one process), generating only
    the chunks the cache lacks.

    ``generate(prompt indices) → per prompt a list of {completion_ids, truncated}``; it gets indices so it can
    seed by prompt.
    """
    rows: list[dict] = []
    chunks = chunked(range(len(prompt_ids)), chunk_size)
    mine = shard(range(len(chunks)), rank, world)
    for done, c in enumerate(mine, 1):
        indices = chunks[c]
        chunk = cache.load("generations", c)
        if chunk is None:
            groups = generate(indices)
            chunk = [
                {"prompt_index": i, "prompt_ids": list(prompt_ids[i]), **sample}
                for i, group in zip(indices, groups, strict=True)
                for sample in group
            ]
            cache.save("generations", c, chunk)
        rows.extend(chunk)
        if progress is not None:
            progress(done, len(mine))
    return rows


def score_pool(
    score: Callable[[list[tuple[list[int], list[int]]]], list[tuple[list[float], list[float]]]],
    rows: list[dict],
    row_ids: Sequence[int],
    cache: ChunkCache,
    chunk_size: int,
    rank: int = 0,
    world: int = 1,
) -> dict[int, tuple[list[float], list[float]]]:
    """``{row id: (entropy, logps)}`` for process ``rank``'s share of ``row_ids`` (all of them with one process),
    scoring only rows not cached yet.

    Cached rows are looked up by row id, so a different selection scores what is new and reuses the rest. A new
    chunk is named after its first row id: rows are scored once, so names never collide across processes or runs.
    """
    mine = shard(row_ids, rank, world)
    found = {r["row"]: (r["entropy"], r["logps"]) for r in cache.load_all("scores")}
    for ids in chunked([i for i in mine if i not in found], chunk_size):
        scored = score([(rows[i]["prompt_ids"], rows[i]["completion_ids"]) for i in ids])
        chunk = [{"row": i, "entropy": e, "logps": lp} for i, (e, lp) in zip(ids, scored, strict=True)]
        cache.save("scores", ids[0], chunk)
        found.update({r["row"]: (r["entropy"], r["logps"]) for r in chunk})
    return {i: found[i] for i in mine}


def reward_function_name(func) -> str:
    func = getattr(func, "func", func)  # functools.partial
    return getattr(func, "__name__", type(func).__name__)


def compute_rewards(
    reward_funcs: Sequence[Callable],
    reward_weights: Sequence[float] | None,
    prompts: list,
    completions: list,
    completion_ids: list[list[int]],
    reward_kwargs: dict[str, list],
    cache_hint: str,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of reward functions with TRL's GRPOTrainer calling convention.

    Each function is called as ``f(prompts=, completions=, completion_ids=, **reward_kwargs)`` and must return one
    float (or None, read as NaN) per completion. A row where every function returned None gets a NaN reward, which
    selection ignores. Returns the totals and each function's rewards by name.
    """
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(
            f"reward_weights has {len(weights)} entries but there are {len(reward_funcs)} reward functions; "
            "give one weight per function."
        )
    per_func: dict[str, list[float]] = {}
    for func in reward_funcs:
        name = reward_function_name(func)
        try:
            out = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)
        except Exception as err:
            raise RuntimeError(
                f"Reward function {name!r} raised {type(err).__name__}: {err}. The rollouts are kept in "
                f"{cache_hint}; fix the function and run again: nothing will be generated twice."
            ) from err
        if inspect.isawaitable(out):
            raise TypeError(f"Reward function {name!r} is async; ReasonMaxxer needs a synchronous function.")
        if out is None or len(out) != len(completions):
            raise ValueError(
                f"Reward function {name!r} returned {None if out is None else len(out)} rewards for "
                f"{len(completions)} completions; it must return one float (or None) per completion."
            )
        values = [float("nan") if v is None else float(v) for v in out]
        if all(math.isnan(v) for v in values):
            raise ValueError(
                f"Reward function {name!r} returned only None/NaN for all {len(values)} completions. Check the "
                f"dataset columns it reads ({', '.join(sorted(reward_kwargs)) or 'none'}) and its answer format. "
                f"The rollouts are kept in {cache_hint}."
            )
        per_func[name] = values
    columns = torch.tensor(list(per_func.values()), dtype=torch.float64)  # [F, N]
    weighted = columns * torch.tensor(weights, dtype=torch.float64)[:, None]
    totals = torch.where(columns.isnan().all(0), float("nan"), weighted.nansum(0))
    return totals.tolist(), per_func


def save_pool(rows: list[dict], path: str) -> Dataset:
    """Save the pool as a ``datasets.Dataset`` (atomically replacing the previous one) and return it."""
    dataset = Dataset.from_list(rows)
    tmp = path + ".tmp"
    dataset.save_to_disk(tmp)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return dataset
