"""The rollout cache of the offline phase (``offline.py``): what makes it resume after a crash.

The cache lives in ``<output_dir>/rollouts/<fingerprint>/``: ``generations/`` and ``scores/`` hold JSON-lines
chunks written atomically, and ``pool/`` the latest complete pool as a ``datasets.Dataset`` (one row per rollout).
Generations and scores depend only on the model, the prompt ids and the sampling settings, which the
fingerprint covers; rewards are cheap and are recomputed on every run, so reward functions can change freely.

With several processes, each one generates the chunks of its :func:`shard` and scores its share of the rows; a
chunk is written by the one process that owns it, so processes never write the same file, and since chunk
boundaries do not depend on the number of processes, neither does the pool.

Here: the cache key (:func:`fingerprint`, :func:`model_fingerprint`), the chunk files (:class:`ChunkCache`), chunk
sizes and shards, and the saved pool (:func:`save_pool`, :data:`POOL_COLUMNS`). The loops that fill it are
``offline.generate_pool`` and ``offline.score_pool``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import torch
from datasets import Dataset


logger = logging.getLogger(__name__)

# the columns every pool has (a rollout_dataset passed in is checked for them); see offline.py for the rest
POOL_COLUMNS = ("prompt_index", "prompt_ids", "completion_ids", "truncated")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Identifies the base weights: the config plus a hash of the name, shape, dtype and bytes of every non-LoRA
    parameter. Any change to the weights (a LoRA merged in memory, a model saved over its folder) gives a new
    fingerprint, so rollouts and scores of the old weights are never reused. One pass over the weights (about a
    second per GB); the trainer computes it once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    start = time.perf_counter()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(base.config.to_json_string(use_diff=False).encode())
    num_bytes, unreadable = 0, []
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        tensor = param.detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        if tensor.device.type == "meta":  # offloaded or not materialised: nothing to read
            unreadable.append(name)
            continue
        data = tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digest.update(data.data)
        num_bytes += data.nbytes
    if unreadable:
        logger.warning(
            "The rollout cache fingerprint cannot read %d parameters on the meta device (e.g. %s); it covers their "
            "names and shapes only.",
            len(unreadable),
            unreadable[0],
        )
    logger.info(
        "Model fingerprint over every base weight (%.1f MB) in %.1f s.", num_bytes / 2**20, time.perf_counter() - start
    )
    return digest.hexdigest()[:16]


def file_digest(path: str) -> str:
    """A short hash of a file's bytes (an adapter's weights: a few MB to a few hundred)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ChunkCache:
    """Atomic JSON-lines chunks under one directory; a missing ``root`` disables caching."""

    def __init__(self, root: str | None):
        self.root = root

    def _path(self, kind: str, index: int) -> str:
        return os.path.join(self.root, kind, f"chunk-{index:05d}.jsonl")

    def has(self, kind: str, index: int) -> bool:
        return self.root is not None and os.path.exists(self._path(kind, index))

    def load(self, kind: str, index: int) -> list[dict] | None:
        """The rows of a chunk, or None when it is missing or unreadable (then it is made again)."""
        if not self.has(kind, index):
            return None
        return _read_chunk(self._path(kind, index))

    def load_all(self, kind: str) -> list[dict]:
        """The rows of every readable chunk of ``kind``, in file-name order."""
        folder = os.path.join(self.root, kind) if self.root is not None else None
        if folder is None or not os.path.isdir(folder):
            return []
        rows = []
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".jsonl")):
            rows.extend(_read_chunk(os.path.join(folder, name)) or [])
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


def _read_chunk(path: str) -> list[dict] | None:
    """A chunk's rows; None, with a warning, when the file is not JSON lines of objects (edited or damaged)."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows and all(isinstance(r, dict) for r in rows):
            return rows
        problem = "no rows" if not rows else "a line that is not a JSON object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"{type(err).__name__}: {err}"
    logger.warning("Ignoring the unreadable cache chunk %s (%s); it will be made again.", path, problem)
    return None


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


def save_pool(rows: list[dict], path: str) -> Dataset:
    """Save the pool as a ``datasets.Dataset`` (atomically replacing the previous one) and return it."""
    dataset = Dataset.from_list(rows)
    parent, name = os.path.split(os.path.abspath(path))
    # a temporary folder of its own: two writers never share it, and a killed run leaves nothing that is read back
    tmp = tempfile.mkdtemp(dir=parent, prefix=f"{name}.tmp-")
    try:
        dataset.save_to_disk(tmp)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):  # a file (or link) in the pool's place
            os.remove(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    for leftover in os.listdir(parent):  # temporary folders of killed runs (the run holds output_dir's lock)
        if leftover == f"{name}.tmp" or leftover.startswith(f"{name}.tmp-"):
            shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    return dataset
