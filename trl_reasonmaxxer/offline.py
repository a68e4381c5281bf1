"""The offline phase, run once before training: generate → reward → select → score → gate → pair.

:meth:`OfflinePhase.run` is the whole phase in four calls, and the steps follow below in that order:

1. **generate** (:meth:`OfflinePhase.build_pool`, :func:`generate_pool`): the frozen base model (the adapter
   disabled) samples ``num_generations`` rollouts per prompt, with HF ``generate`` (``rollouts.py``), vLLM
   (``vllm_backend.py``) or llama.cpp on CPU (``llama_engine.py``); :meth:`OfflinePhase.rollout_engine` picks the
   backend. Chunks of prompts are cached (``cache.py``), so an interrupted phase resumes at the first missing chunk;
   with several processes each one generates its shard of the chunks.
2. **reward** (:meth:`OfflinePhase.reward`): the reward functions, called as GRPOTrainer calls them
   (``rewards.call_reward_funcs``). Rewards are cheap and recomputed on every run, so reward functions can change
   freely. The rewarded *pool*, one row per rollout, is saved under ``<cache_dir>/pool``.
3. **select** (:func:`select_rollouts`, pure): mixed-success prompts and per-prompt advantages (``selection.py``).
4. **score** (:meth:`OfflinePhase.score`, :func:`score_pool`): the base model's entropy and log-prob of each sampled
   token of the selected rollouts (``scoring.py``), cached like the generations.
5. **gate → pair** (:func:`pairs_from_scored_pool`, pure): fork masks (``gating.py``) and training items of two
   rollouts of a prompt (``collator.build_pairs``), plus the pool statistics logged once and written to the card.

The *pool* is the table of rollouts: ``prompt_index``, ``prompt_ids``, ``completion_ids``, ``completion``,
``truncated``, ``reward`` and ``rewards/<function>`` (a pool built earlier, passed as the trainer's
``rollout_dataset``, may also carry ``entropy`` and ``logps``, which skips scoring).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

from accelerate.utils import gather_object
from trl.trainer.utils import use_adapter

from . import gating, llama_engine, selection
from .cache import ChunkCache, chunked, default_chunk_size, fingerprint, model_fingerprint, save_pool, shard
from .collator import build_pairs
from .inputs import check_prompt_lengths, learned_position_limit
from .rewards import call_reward_funcs
from .rollouts import generate_completions, tokenize_prompt, warn_if_truncated
from .scoring import score_rollouts
from .vllm_backend import VLLMRollouts, resolve_use_vllm


logger = logging.getLogger(__name__)

Scores = dict[int, tuple[list[float], list[float]]]  # row id -> (entropy, base log-probs) per completion token
# a rollout backend other than HF generate: generate(prompt_ids, prompt_indices) and close(), seeded per prompt
Engine = VLLMRollouts | llama_engine.LlamaRollouts


class OfflinePhase:
    """The offline phase of one trainer: the pool of rollouts, then the training items.

    Args:
        model (`PeftModel`): the policy; every step runs the base model, with the adapter disabled.
        tokenizer: its tokenizer (pad and EOS set).
        args ([`ReasonMaxxerConfig`]): sampling, selection, gate and cache settings.
        accelerator: the processes (`process_index`, `num_processes`, `is_main_process`, `wait_for_everyone`).
        prompt_dataset (`Dataset` or None): the trainer's `train_dataset`, a `prompt` column plus the columns rewards
            read.
        rollout_dataset (`Dataset` or None): a pool built earlier; used instead of generating one.
        reward_funcs (`list[Callable]`): resolved reward functions (`rewards.resolve_reward_funcs`).
    """

    def __init__(self, model, tokenizer, args, accelerator, prompt_dataset, rollout_dataset, reward_funcs):
        self.model, self.tokenizer, self.args, self.accelerator = model, tokenizer, args, accelerator
        self.prompt_dataset, self.rollout_dataset, self.reward_funcs = prompt_dataset, rollout_dataset, reward_funcs
        self.use_vllm = resolve_use_vllm(args.use_vllm)
        # llama.cpp on CPU when available (args.use_llama_cpp); None: transformers generate (or vLLM)
        self.llama_rollouts = None if self.use_vllm else llama_engine.rollout_engine(model, tokenizer, args)

    def run(self, trainer_kwargs: Mapping | None = None) -> tuple[list[dict], dict[str, float]]:
        """The offline phase end to end; returns the training items and the pool statistics.

        ``trainer_kwargs`` are what GRPOTrainer passes reward functions besides the dataset columns
        (``trainer_state``, ``log_metric``, ``log_extra``).
        """
        rows = self.pool(trainer_kwargs)  # generate → reward (or the pool passed in)
        chosen = select_rollouts(rows, self.args, self.kept_in)  # select
        scores = self.score(chosen.rows, chosen.row_ids)  # score
        items, stats = pairs_from_scored_pool(chosen, scores, self.args, self.kept_in)  # gate → pair
        logger.info("ReasonMaxxer pool: %s %d training items (rollout pairs).", chosen.report.summary(), len(items))
        return items, stats

    def pool(self, trainer_kwargs: Mapping | None = None) -> list[dict]:
        """The pool's rows: the ``rollout_dataset`` passed in (rewarded here when it has no ``reward`` column), else
        :meth:`build_pool`."""
        if self.rollout_dataset is None:
            return self.build_pool(trainer_kwargs)
        rows = self.rollout_dataset.to_list()
        if "reward" not in self.rollout_dataset.column_names:
            self.reward(rows, "the rollout_dataset you passed", trainer_kwargs)
        return rows

    # ---------------------------------------------------------------- generate → reward
    def build_pool(self, trainer_kwargs: Mapping | None = None) -> list[dict]:
        """Run (or resume) rollouts and rewards for every prompt; returns the pool, one row per rollout, also saved
        under ``cache_dir/pool``.

        With several processes (``accelerate launch``, ``torchrun``) each one generates and rewards its shard of the
        chunks; the pool is gathered in prompt order, so it is the one-process pool, and the main process writes it
        while the others wait.
        """
        acc = self.accelerator
        cache = self.chunk_cache()
        prompt_ids = self.prompt_ids
        if cache.root is not None and acc.is_main_process:
            _log_cache_use(cache.root)
        engine = self.rollout_engine(cache, math.ceil(len(prompt_ids) / self.chunk_size))
        try:
            rows = generate_pool(
                partial(self.generate, engine=engine),
                prompt_ids,
                cache,
                self.chunk_size,
                rank=acc.process_index,
                world=acc.num_processes,
            )
        finally:
            if engine is not None:
                engine.close()
        if rows:  # a process with no chunk (more processes than chunks) has nothing to reward
            self.reward(rows, self.kept_in, trainer_kwargs)
        rows = gather_object(rows)
        if cache.root is not None and acc.is_main_process:
            save_pool(rows, os.path.join(cache.root, "pool"))
        acc.wait_for_everyone()
        return rows

    def rollout_engine(self, cache: ChunkCache, num_chunks: int) -> Engine | None:
        """The rollout backend: with ``use_vllm`` a vLLM engine when some process has chunks to generate (every
        process builds one then, because a colocated engine joins the launcher's process group); else the llama.cpp
        engine when ``use_llama_cpp`` found a GGUF (``llama_engine.rollout_engine``); None means HF ``generate``
        (:meth:`generate`)."""
        if not self.use_vllm:
            return self.llama_rollouts
        acc = self.accelerator
        mine = shard(range(num_chunks), acc.process_index, acc.num_processes)
        if not any(gather_object([any(not cache.has("generations", c) for c in mine)])):
            return None
        return VLLMRollouts(self.model, self.tokenizer, self.args, acc)

    def generate(self, indices: list[int], engine: Engine | None = None) -> list[list[dict]]:
        """Rollouts for a chunk of prompts: with the engine when one is given (seeded per prompt), else with HF
        ``generate`` seeded by the chunk's first prompt index."""
        a = self.args
        prompts = [self.prompt_ids[i] for i in indices]
        if engine is not None:
            return engine.generate(prompts, indices)
        with use_adapter(self.model, None):
            return generate_completions(
                self.model,
                self.tokenizer,
                prompts,
                num_generations=a.num_generations,
                max_new_tokens=a.max_completion_length,
                temperature=a.temperature,
                top_p=a.top_p,
                top_k=a.top_k,
                min_p=a.min_p,
                repetition_penalty=a.repetition_penalty,
                batch_size=a.rollout_batch_size,
                seed=a.seed + indices[0],
                desc="Rollouts",
                generation_kwargs=a.generation_kwargs,
                disable_progress=a.disable_tqdm,
            )

    def reward(self, rows: list[dict], cache_hint: str, trainer_kwargs: Mapping | None = None) -> None:
        """Add ``completion`` (the decoded text), ``reward`` (the weighted sum) and ``rewards/<function>`` to each
        row, calling the reward functions once on all of them."""
        texts, totals, per_func = call_reward_funcs(
            self.reward_funcs,
            [self.prompt_dataset[r["prompt_index"]] for r in rows],
            [r["completion_ids"] for r in rows],
            self.tokenizer,
            self.args.reward_weights,
            trainer_kwargs,
            cache_hint,
        )
        for i, row in enumerate(rows):
            row["completion"] = texts[i]
            row["reward"] = totals[i]
            for name, values in per_func.items():
                row[f"rewards/{name}"] = values[i]

    # ---------------------------------------------------------------- score
    def score(self, rows: list[dict], row_ids: list[int]) -> Scores:
        """Entropy and base log-probs for ``row_ids``: from the pool's own columns, else scored (and cached)."""
        if all(rows[i].get("entropy") is not None for i in row_ids):
            return {i: (rows[i]["entropy"], rows[i]["logps"]) for i in row_ids}
        acc = self.accelerator
        mine = score_pool(
            self.score_sequences,
            rows,
            row_ids,
            self.chunk_cache(),
            self.chunk_size * self.args.num_generations,
            rank=acc.process_index,
            world=acc.num_processes,
        )
        return {i: scores for part in gather_object([mine]) for i, scores in part.items()}

    def score_sequences(self, sequences: list[tuple[list[int], list[int]]]) -> list[tuple[list[float], list[float]]]:
        """The base model's entropy and log-prob of each completion token of ``(prompt_ids, completion_ids)``."""
        with use_adapter(self.model, None):
            return score_rollouts(
                self.model,
                sequences,
                self.tokenizer.pad_token_id,
                self.args.scoring_batch_size,
                disable_progress=self.args.disable_tqdm,
            )

    # ---------------------------------------------------------------- prompts and cache
    @cached_property
    def prompt_ids(self) -> list[list[int]]:
        """Each prompt's token ids (chat template applied), checked against the model's positions."""
        ids = [
            tokenize_prompt(self.tokenizer, p, self.args.chat_template_kwargs) for p in self.prompt_dataset["prompt"]
        ]
        check_prompt_lengths(ids, self.args.max_completion_length, learned_position_limit(self.model.get_base_model()))
        return ids

    @cached_property
    def weights_fingerprint(self) -> str:
        # only the adapter trains and the checksum skips it, so the base weights' checksum is computed once
        return model_fingerprint(self.model)

    @property
    def chunk_size(self) -> int:
        """Prompts per cached chunk: ``rollout_chunk_size``, else whole ``generate`` calls of at least 8 prompts."""
        a = self.args
        if a.rollout_chunk_size is not None:
            return a.rollout_chunk_size
        # vLLM takes a whole chunk at once; HF generate takes it in calls of rollout_batch_size sequences
        return default_chunk_size(1 if self.use_vllm else max(1, a.rollout_batch_size // a.num_generations))

    @property
    def cache_dir(self) -> str:
        """Where this model/prompts/sampling combination caches its rollouts: ``<rollout_cache_root>/<key>``
        (``output_dir/rollouts/<key>`` by default)."""
        a = self.args
        # a pool passed in is identified by its own fingerprint: only its scores get cached
        prompts = self.prompt_ids if self.rollout_dataset is None else self.rollout_dataset._fingerprint
        backend = ["vllm"] if self.use_vllm else []  # HF-generated caches predate the vLLM backend: same keys
        if self.llama_rollouts is not None:  # llama.cpp draws other samples than generate
            backend = ["llama_cpp", os.path.basename(self.llama_rollouts.gguf_path)]
        key = fingerprint(
            self.weights_fingerprint,
            prompts,
            a.num_generations,
            a.temperature,
            a.top_p,
            a.top_k,
            a.min_p,
            a.repetition_penalty,
            a.max_completion_length,
            a.generation_kwargs,
            a.seed,
            self.chunk_size,
            *backend,
        )
        return os.path.join(a.rollout_cache_root or os.path.join(a.output_dir, "rollouts"), key)

    def chunk_cache(self) -> ChunkCache:
        return ChunkCache(self.cache_dir if self.args.rollout_cache else None)

    @property
    def engine_name(self) -> str:
        """What the rollouts are sampled with: ``"vllm"``, ``"llama.cpp"`` or ``"transformers"``."""
        return "vllm" if self.use_vllm else "transformers" if self.llama_rollouts is None else "llama.cpp"

    @property
    def kept_in(self) -> str:
        """Where the rollouts are kept, for error messages."""
        return self.cache_dir if self.args.rollout_cache else "memory only (rollout_cache=False)"


# ---------------------------------------------------------------------------------------------------------
# 1. generate: chunk by chunk, cached, sharded over processes


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
        if chunk is not None and not _valid_generation_chunk(chunk, indices, prompt_ids):
            logger.warning(
                "The cached rollouts %s do not match prompts %d-%d (edited or damaged); generating them again.",
                cache._path("generations", c),
                indices[0],
                indices[-1],
            )
            chunk = None
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


def _valid_generation_chunk(rows: list[dict], indices: list[int], prompt_ids: Sequence[Sequence[int]]) -> bool:
    """Whether a cached generation chunk holds rollouts of exactly these prompts, with these prompt ids."""
    try:
        if sorted({r["prompt_index"] for r in rows}) != sorted(indices):
            return False
        return all(
            list(r["prompt_ids"]) == list(prompt_ids[r["prompt_index"]])
            and isinstance(r["truncated"], bool)
            and isinstance(r["completion_ids"], list)
            and all(isinstance(t, int) and t >= 0 for t in r["completion_ids"])
            for r in rows
        )
    except (KeyError, TypeError, IndexError):
        return False


def _log_cache_use(root: str) -> None:
    """Say whether the rollouts are reused, and why not when other caches exist (the key covers every base weight,
    the prompts and the sampling settings, so a model changed in place is sampled again)."""
    if os.path.isdir(os.path.join(root, "generations")):
        logger.info("Reusing the rollouts cached in %s (same base weights, prompts and sampling settings).", root)
        return
    parent = os.path.dirname(root)
    others = [n for n in os.listdir(parent) if n != os.path.basename(root)] if os.path.isdir(parent) else []
    if others:
        logger.warning(
            "Sampling new rollouts into %s; %d other rollout cache%s in %s (other base weights, prompts or sampling "
            "settings) %s not reused.",
            root,
            len(others),
            "s" if len(others) > 1 else "",
            parent,
            "are" if len(others) > 1 else "is",
        )


# ---------------------------------------------------------------------------------------------------------
# 3. select (pure; step 2, reward, is rewards.call_reward_funcs, called by OfflinePhase.reward)


@dataclass
class Selection:
    """What :func:`select_rollouts` keeps: the pool's rows with their rewards masked, the selection report, and the
    rows that train (``row_ids``, rows of ``rows``) with their advantages."""

    rows: list[dict]
    report: selection.SelectionReport
    row_ids: list[int]
    advantages: list[float]


def select_rollouts(rows: list[dict], args, kept_in: str) -> Selection:
    """Mask, select, weigh: ungraded rollouts (every reward function returned None) and, with
    ``mask_truncated_completions``, truncated ones get a NaN reward, which selection ignores (the rows stay in place:
    cached scores are keyed by row id); then the ``max_problems`` mixed-success prompts and their per-prompt
    advantages. Rows with A = 0 never train, so they are left out of scoring and of the τ calibration. ``rows`` are
    not modified. Raises, with a diagnosis of the rewards, when no prompt has mixed success."""
    a = args
    rows = [
        {**r, "reward": float("nan")}
        if r["reward"] is None or (a.mask_truncated_completions and r["truncated"])
        else r
        for r in rows
    ]
    warn_if_truncated([r["truncated"] for r in rows], a.max_completion_length)
    report = selection.select_problems(
        [r["prompt_index"] for r in rows],
        [r["reward"] for r in rows],
        a.max_problems,
        a.success_threshold,
        truncated=[r["truncated"] for r in rows],
        lengths=[len(r["completion_ids"]) for r in rows],
    )
    if not report.selected:
        raise ValueError(
            f"No prompt has mixed success, so there is no contrast to learn from. {report.summary()} "
            f"{pool_diagnosis(rows, a)}Use more generations (num_generations), problems the model sometimes "
            f"solves, or a higher temperature. The rollouts are kept in {kept_in}."
        )
    keep = set(report.selected)
    row_ids = [i for i, r in enumerate(rows) if r["prompt_index"] in keep]
    advantages = selection.group_advantages(
        [rows[i]["prompt_index"] for i in row_ids], [rows[i]["reward"] for i in row_ids], a.advantage_clip
    )
    kept = [(i, adv) for i, adv in zip(row_ids, advantages, strict=True) if adv != 0]
    return Selection(rows, report, [i for i, _ in kept], [adv for _, adv in kept])


def pool_diagnosis(rows: list[dict], args) -> str:
    """What the rewards of a pool with no mixed prompt look like, for the error message: their range, prompts whose
    rewards differ but were not counted as mixed (a reward-scale problem), ungraded and masked rollouts."""
    groups = defaultdict(list)
    for r in rows:
        if not math.isnan(r["reward"]):
            groups[r["prompt_index"]].append(r["reward"])
    graded = [v for values in groups.values() for v in values]
    notes = []
    if graded:
        notes.append(f"Rewards range from {min(graded):.4g} to {max(graded):.4g} over {len(graded)} graded rollouts.")
    varying = sum(max(values) > min(values) for values in groups.values())
    if varying:
        notes.append(
            f"{varying} prompt{'s have' if varying > 1 else ' has'} rewards that differ between rollouts, yet "
            "selection counted none as mixed: it compares each rollout's weighted reward (reward_weights) with a "
            "success threshold, so check that your rewards' scale puts successes above it and failures below it."
        )
    truncated = sum(bool(r["truncated"]) for r in rows)
    if args.mask_truncated_completions and truncated:
        notes.append(
            f"{truncated} of {len(rows)} rollouts hit max_completion_length={args.max_completion_length} and were "
            "ignored (mask_truncated_completions=True): raise max_completion_length or set "
            "mask_truncated_completions=False."
        )
    masked = args.mask_truncated_completions
    ungraded = sum(math.isnan(r["reward"]) and not (masked and r["truncated"]) for r in rows)
    if ungraded:
        notes.append(f"{ungraded} rollouts have no reward (every reward function returned None).")
    return "".join(note + " " for note in notes)


# ---------------------------------------------------------------------------------------------------------
# 4. score: the selected rows, cached, sharded over processes


def score_pool(
    score: Callable[[list[tuple[list[int], list[int]]]], list[tuple[list[float], list[float]]]],
    rows: list[dict],
    row_ids: Sequence[int],
    cache: ChunkCache,
    chunk_size: int,
    rank: int = 0,
    world: int = 1,
) -> Scores:
    """``{row id: (entropy, logps)}`` for process ``rank``'s share of ``row_ids`` (all of them with one process),
    scoring only rows not cached yet.

    Cached rows are looked up by row id, so a different selection scores what is new and reuses the rest. A new
    chunk is named after its first row id: rows are scored once, so names never collide across processes or runs.
    """
    mine = shard(row_ids, rank, world)
    found, misfits = cached_scores(cache, rows)
    if misfits:
        logger.warning(
            "Ignoring %d cached score rows of %s that do not fit their rollouts (edited or damaged); those rollouts "
            "are scored again.",
            misfits,
            cache.root,
        )
    for ids in chunked([i for i in mine if i not in found], chunk_size):
        scored = score([(rows[i]["prompt_ids"], rows[i]["completion_ids"]) for i in ids])
        chunk = [{"row": i, "entropy": e, "logps": lp} for i, (e, lp) in zip(ids, scored, strict=True)]
        cache.save("scores", ids[0], chunk)
        found.update({r["row"]: (r["entropy"], r["logps"]) for r in chunk})
    return {i: found[i] for i in mine}


def cached_scores(cache: ChunkCache, rows: Sequence[dict]) -> tuple[Scores, int]:
    """The cached ``{row id: (entropy, logps)}`` of ``rows`` that fit their rollouts, and how many cached rows did
    not (an id out of range, a length or a value that does not fit: edited or damaged)."""
    found, misfits = {}, 0
    for r in cache.load_all("scores"):
        i = r.get("row")
        if isinstance(i, int) and 0 <= i < len(rows) and _valid_scores(r, len(rows[i]["completion_ids"])):
            found[i] = (r["entropy"], r["logps"])
        else:
            misfits += 1
    return found, misfits


def _valid_scores(entry: dict, length: int) -> bool:
    """Whether cached scores of one rollout have one finite entropy and log-prob per completion token."""
    try:
        entropy, logps = entry["entropy"], entry["logps"]
        return len(entropy) == len(logps) == length and all(math.isfinite(v) for v in (*entropy, *logps))
    except (KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------------------
# 5. gate → pair (pure)


def pairs_from_scored_pool(
    chosen: Selection, scores: Scores, args, kept_in: str
) -> tuple[list[dict], dict[str, float]]:
    """Fork masks from the base entropies of the selected rollouts (``gating.build_fork_masks``), then training items
    of two rollouts of a prompt (``collator.build_pairs``); returns the items and the pool statistics. Raises when
    too few items are left to train on."""
    a = args
    rows, row_ids = chosen.rows, chosen.row_ids
    entropies = [scores[i][0] for i in row_ids]
    masks, tau = gating.build_fork_masks(
        entropies, a.fork_gate, a.fork_threshold, a.fork_fraction, a.fork_scope, a.fork_topk, a.seed
    )
    selected = [
        {**rows[i], "advantage": adv, "fork_mask": mask, "logps": scores[i][1]}
        for i, adv, mask in zip(row_ids, chosen.advantages, masks, strict=True)
    ]
    pairs = build_pairs(selected, seed=a.seed, preference=a.loss_type == "fork_dpo")
    per_step = a.per_device_train_batch_size * a.world_size
    if not pairs or (a.dataloader_drop_last and len(pairs) < per_step):
        too_few = (
            "no training item"
            if not pairs
            else f"{len(pairs)} training items, fewer than one batch ({per_step}) with dataloader_drop_last"
        )
        raise ValueError(
            f"The offline phase left {too_few} to train on. {chosen.report.summary()} Only rollouts with a non-zero "
            "advantage (a reward off their prompt's mean) train. Use more problems (train_dataset, max_problems) or more "
            f"generations{', or dataloader_drop_last=False' if pairs else ''}. The rollouts are kept in {kept_in}."
        )
    return pairs, pool_statistics(rows, selected, entropies, masks, tau, chosen.report, len(pairs))


def pool_statistics(rows, selected, entropies, masks, tau, report, num_pairs) -> dict[str, float]:
    """Statistics of the offline phase, logged once and written to the model card."""
    n = len(rows)
    graded = [r for r in rows if not math.isnan(r["reward"])]
    forks = [h for row, mask in zip(entropies, masks) for h, g in zip(row, mask) if g]
    stats = {
        "pool/reward": sum(r["reward"] for r in graded) / max(len(graded), 1),
        "pool/pass_rate": report.mean_pass_rate,
        "pool/prompts": report.num_prompts,
        "pool/prompts_mixed": report.mixed,
        "pool/prompts_selected": len(report.selected),
        "pool/rollouts_selected": len(selected),
        "pool/pairs": num_pairs,
        "pool/completion_length": sum(len(r["completion_ids"]) for r in rows) / max(n, 1),
        "pool/truncation_rate": sum(bool(r["truncated"]) for r in rows) / max(n, 1),
        "fork/gated_fraction": gating.gated_fraction(masks),
        "fork/mean_entropy": sum(forks) / len(forks) if forks else 0.0,
    }
    if tau is not None:
        stats["fork/threshold"] = tau
    return stats
