"""``ReasonMaxxerTrainer``: a drop-in for TRL's GRPOTrainer that replaces online RL with one offline pass."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import socket
import textwrap
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path

import pyarrow.compute as pc
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict, IterableDataset
from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training
from torch.utils.data import SequentialSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.trainer_utils import IntervalStrategy, enable_full_determinism, set_seed
from transformers.utils import hf_api, is_peft_available
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, use_adapter

from . import gating, hub, pool, selection
from .collator import DataCollatorForForkPairs, build_pairs
from .config import ReasonMaxxerConfig, default_lora_config
from .evaluation import check_model_path
from .llama_engine import rollout_engine
from .losses import chunked_logps_and_kl, reasonmaxxer_loss
from .rollouts import generate_completions, tokenize_prompt, warn_if_truncated
from .scoring import base_lm_head, check_lm_head, final_hidden_states, score_rollouts
from .vllm_backend import VLLMRollouts, resolve_use_vllm


logger = logging.getLogger(__name__)

# Tokens whose full-vocabulary fp32 logits the loss holds at once (≈ 78 MiB each with a 151,936-token vocabulary)
LOSS_CHUNK_TOKENS = 128


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


def quantized_device_map() -> dict[str, int]:
    """Each process loads its whole quantized copy on its own GPU: bitsandbytes weights cannot be moved after
    loading, and ``device_map="auto"`` would spread every rank's copy over all GPUs."""
    return {"": PartialState().local_process_index}


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


class ReasonMaxxerTrainer(_BaseTrainer):
    """Trainer for ReasonMaxxer (Akgül et al., 2026): RL for reasoning replaced by sparse, offline policy selection.

    ``train()`` first runs the offline phase once (rollouts of the frozen base model, rewards, selection of
    mixed-success prompts, entropy scoring, fork gating, preference pairs; cached under ``output_dir``), then trains
    a LoRA adapter with an advantage-weighted loss at fork tokens plus a KL anchor to the base model (the same model
    with its adapter disabled) elsewhere.

    The constructor is GRPOTrainer's, so a GRPO script runs after renaming ``GRPOTrainer``/``GRPOConfig``.

    Args:
        model (`str` or `PreTrainedModel`): model id or path, or a loaded causal LM (not yet wrapped by PEFT).
        reward_funcs (callable, name, or a list of them): GRPO-convention reward functions.
        args ([`ReasonMaxxerConfig`]): configuration; defaults to the paper's settings.
        train_dataset (`Dataset`): a `prompt` column (text or chat messages) plus the columns rewards read.
        processing_class: tokenizer; loaded from the model when None.
        peft_config (`LoraConfig`): the adapter; the paper's r=32/α=64 q/k/v/o LoRA when None.
        rollout_dataset (`Dataset`, optional): a pool built earlier (see [`build_rollout_dataset`]); skips
            generation and scoring where it has them.
    """

    _tag_names = ["trl", "reasonmaxxer"]
    _name = "ReasonMaxxer"
    _paper = {
        "title": "Rethinking RL for LLM Reasoning: It's Sparse Policy Selection, Not Capability Learning",
        "id": "2605.06241",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{akgul2026reasonmaxxer,
                title   = {{Rethinking RL for LLM Reasoning: It's Sparse Policy Selection, Not Capability Learning}},
                author  = {Akg{\\"u}l, Faruk and Kannan, Rajgopal and Neiswanger, Willie and Prasanna, Viktor},
                year    = 2026,
                eprint  = {arXiv:2605.06241},
            }"""),
    }
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: ReasonMaxxerConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config: PeftConfig | None = None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
        rollout_dataset: Dataset | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ReasonMaxxerConfig(f"{Path(name or 'model').name}-ReasonMaxxer")
        if not isinstance(args, ReasonMaxxerConfig):
            raise TypeError(
                f"args must be a ReasonMaxxerConfig, got {type(args).__name__}. ReasonMaxxerConfig takes every "
                "GRPOConfig argument: rename GRPOConfig(...) to ReasonMaxxerConfig(...) (its defaults are the paper's)."
            )
        # Seed before the adapter is created (Trainer seeds only later): its random init must not depend on what
        # ran before in the process, or a resumed run and an uninterrupted one would start from different adapters.
        _seed_everything(args)
        for argument, value in (
            ("tools", tools),
            ("rollout_func", rollout_func),
            ("environment_factory", environment_factory),
        ):
            if value is not None:
                raise ValueError(
                    f"`{argument}` is a GRPO feature for agentic rollouts; ReasonMaxxer does not support it."
                )
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
        if rollout_dataset is not None:
            check_rollout_dataset(rollout_dataset, vocab_size=None, num_prompts=None)  # type and columns
        needs_rewards = rollout_dataset is None or "reward" not in rollout_dataset.column_names
        if needs_rewards:
            _check_prompt_dataset(train_dataset)
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs] if reward_funcs else []
        self.reward_funcs = [resolve_reward_func(f) for f in funcs]
        if needs_rewards and not self.reward_funcs:
            raise ValueError(
                "reward_funcs is required: pass at least one reward function (e.g. math_accuracy_reward)."
            )
        if not needs_rewards and self.reward_funcs:
            logger.warning(
                "rollout_dataset already has a `reward` column, so reward_funcs are not called. To reward the pool "
                "with them, pass rollout_dataset.remove_columns('reward')."
            )
        if needs_rewards and args.reward_weights is not None and len(args.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(args.reward_weights)} entries but there are {len(self.reward_funcs)} reward "
                "functions; give one weight per function."
            )
        # Claim output_dir before any work: a read-only one, or one another run uses, is refused now
        if args.process_index == 0:
            lock = acquire_output_dir_lock(args.output_dir)
            weakref.finalize(self, release_output_dir_lock, lock)

        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                init_kwargs["quantization_config"] = quantization_config
            if init_kwargs.get("quantization_config") is not None:
                has_bnb = importlib.util.find_spec("bitsandbytes") is not None
                check_quantization_supported(has_bnb, torch.cuda.is_available())
                init_kwargs.setdefault("device_map", quantized_device_map())
            elif args.world_size > 1:
                init_kwargs.setdefault("device_map", None)  # "auto" would spread each rank's copy over every GPU
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            check_model_path(model)
            model = create_model_from_path(model, **init_kwargs)
        elif quantization_config is not None:
            raise ValueError("quantization_config needs `model` as an id or path: the model is already loaded.")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an EOS token: rollouts are padded in batches and end at "
                "EOS. Set them before passing it, e.g. tokenizer.eos_token = '<|endoftext|>' (a token of its "
                "vocabulary) or tokenizer.pad_token = ..."
            )
        self._tokenizer = tokenizer

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            # QLoRA recipe: freeze the base and keep its unquantized parts (norms, embeddings, LM head) in float32,
            # so entropies and log-probs of the quantized base are computed in full precision
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
        if is_peft_available() and hasattr(model, "peft_config"):
            if peft_config is not None:
                raise ValueError("The model is already a PeftModel; pass either it or peft_config, not both.")
        else:
            model = get_peft_model(model, peft_config or default_lora_config(model))
        if args.gradient_checkpointing:
            model.enable_input_require_grads()
        if args.disable_dropout:
            _disable_dropout(model)

        if rollout_dataset is not None:
            check_rollout_dataset(
                rollout_dataset,
                model.get_input_embeddings().num_embeddings,
                len(train_dataset) if needs_rewards else None,
            )
        self.prompt_dataset = train_dataset
        self.rollout_dataset = rollout_dataset
        self._use_vllm = resolve_use_vllm(args.use_vllm)
        # llama.cpp on CPU when available (args.use_llama_cpp); None: transformers generate (or vLLM)
        self._llama_rollouts = None if self._use_vllm else rollout_engine(model, tokenizer, args)
        self.pool_stats: dict[str, float] = {}
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._lm_head_checked = False
        super().__init__(
            model=model,
            args=args,
            data_collator=DataCollatorForForkPairs(tokenizer.pad_token_id, args.pad_to_multiple_of),
            train_dataset=None,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model.base_model.model.add_model_tags(self._tag_names)

    # ---------------------------------------------------------------- offline phase
    @property
    def rollout_cache_dir(self) -> str:
        """Where this model/prompts/sampling combination caches its rollouts."""
        a = self.args
        # a pool passed in is identified by its own fingerprint: only its scores get cached
        prompts = self._prompt_ids() if self.rollout_dataset is None else self.rollout_dataset._fingerprint
        backend = ["vllm"] if self._use_vllm else []  # HF-generated caches predate the vLLM backend: same keys
        if self._llama_rollouts is not None:  # llama.cpp draws other samples than generate
            backend = ["llama_cpp", os.path.basename(self._llama_rollouts.gguf_path)]
        key = pool.fingerprint(
            self._model_fingerprint,
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
            self._rollout_chunk_size,
            *backend,
        )
        return os.path.join(a.output_dir, "rollouts", key)

    @property
    def _rollout_chunk_size(self) -> int:
        a = self.args
        if a.rollout_chunk_size is not None:
            return a.rollout_chunk_size
        # vLLM takes a whole chunk at once; HF generate takes it in calls of rollout_batch_size sequences
        return pool.default_chunk_size(1 if self._use_vllm else max(1, a.rollout_batch_size // a.num_generations))

    @cached_property
    def _model_fingerprint(self) -> str:
        # only the adapter trains and the checksum skips it, so the base weights' checksum is computed once
        return pool.model_fingerprint(self.model)

    def _prompt_ids(self) -> list[list[int]]:
        if not hasattr(self, "_cached_prompt_ids"):
            ids = [
                tokenize_prompt(self._tokenizer, p, self.args.chat_template_kwargs)
                for p in self.prompt_dataset["prompt"]
            ]
            check_prompt_lengths(
                ids, self.args.max_completion_length, learned_position_limit(self.model.get_base_model())
            )
            self._cached_prompt_ids = ids
        return self._cached_prompt_ids

    def _cache(self) -> pool.ChunkCache:
        return pool.ChunkCache(self.rollout_cache_dir if self.args.rollout_cache else None)

    def _generate(self, indices: list[int], engine: VLLMRollouts | None = None) -> list[list[dict]]:
        """Rollouts for a chunk of prompts: with vLLM when an engine is given (seeded per prompt), else with HF
        ``generate`` seeded by the chunk's first prompt index."""
        a = self.args
        all_ids = self._prompt_ids()
        if engine is not None:
            return engine.generate([all_ids[i] for i in indices], indices)
        with use_adapter(self.model, None):
            return generate_completions(
                self.model,
                self._tokenizer,
                [all_ids[i] for i in indices],
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

    def _vllm_engine(self, cache: pool.ChunkCache, num_chunks: int) -> VLLMRollouts | None:
        """A vLLM engine when ``use_vllm`` and some process has chunks to generate; every process builds one then,
        because a colocated engine joins the launcher's process group."""
        if not self._use_vllm:
            return None
        acc = self.accelerator
        mine = pool.shard(range(num_chunks), acc.process_index, acc.num_processes)
        if not any(gather_object([any(not cache.has("generations", c) for c in mine)])):
            return None
        return VLLMRollouts(self.model, self._tokenizer, self.args, acc)

    def build_rollout_dataset(self) -> Dataset:
        """Run (or resume) rollouts and rewards for every prompt; returns the pool, one row per rollout.

        Columns: ``prompt_index``, ``prompt_ids``, ``completion_ids``, ``completion``, ``truncated``, ``reward`` and
        ``rewards/<function>``. Also saved under ``rollout_cache_dir/pool``.

        With several processes (``accelerate launch``, ``torchrun``) each one generates and rewards its shard of the
        chunks; the pool is gathered in prompt order, so it is the one-process pool, and the main process writes it
        while the others wait.
        """
        acc = self.accelerator
        cache = self._cache()
        prompt_ids = self._prompt_ids()
        if cache.root is not None and acc.is_main_process:
            _log_cache_use(cache.root)
        chunk = self._rollout_chunk_size
        rank, world = acc.process_index, acc.num_processes
        engine = self._vllm_engine(cache, math.ceil(len(prompt_ids) / chunk)) or self._llama_rollouts
        generate = partial(self._generate, engine=engine)
        try:
            rows = pool.generate_pool(generate, prompt_ids, cache, chunk, rank=rank, world=world)
        finally:
            if engine is not None:
                engine.close()
        if rows:  # a process with no chunk (more processes than chunks) has nothing to reward
            self._add_rewards(rows, cache.root or "memory (rollout_cache=False)")
        rows = gather_object(rows)
        if cache.root is not None and acc.is_main_process:
            dataset = pool.save_pool(rows, os.path.join(cache.root, "pool"))
        else:
            dataset = Dataset.from_list(rows)
        acc.wait_for_everyone()
        return dataset

    def _add_rewards(self, rows: list[dict], cache_hint: str) -> None:
        data = self.prompt_dataset
        conversational = is_conversational(data[0])
        prompts = [data[r["prompt_index"]]["prompt"] for r in rows]
        texts = self._tokenizer.batch_decode([r["completion_ids"] for r in rows], skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        kwargs = {
            col: [data[r["prompt_index"]][col] for r in rows]
            for col in data.column_names
            if col not in ("prompt", "completion", "completion_ids")
        }
        kwargs["trainer_state"] = self.state
        kwargs["log_metric"] = lambda name, value: self._metrics["train"][name].append(value)
        kwargs["log_extra"] = lambda column, values: None
        totals, per_func = pool.compute_rewards(
            self.reward_funcs,
            self.args.reward_weights,
            prompts,
            completions,
            [r["completion_ids"] for r in rows],
            kwargs,
            cache_hint,
        )
        for i, row in enumerate(rows):
            row["completion"] = texts[i]
            row["reward"] = totals[i]
            for name, values in per_func.items():
                row[f"rewards/{name}"] = values[i]

    def prepare_training_data(self) -> Dataset:
        """Offline phase end to end: pool → selection → advantages → scoring → fork gates → preference pairs."""
        a = self.args
        if self.rollout_dataset is None:
            rows = self.build_rollout_dataset().to_list()
        else:
            rows = self.rollout_dataset.to_list()
            if "reward" not in self.rollout_dataset.column_names:
                self._add_rewards(rows, "the rollout_dataset you passed")
        for r in rows:
            # NaN rewards are ignored by selection; rows stay in place because cached scores are keyed by row id
            if r["reward"] is None or (a.mask_truncated_completions and r["truncated"]):
                r["reward"] = float("nan")
        warn_if_truncated([r["truncated"] for r in rows], a.max_completion_length)
        prompt_index = [r["prompt_index"] for r in rows]
        rewards = [r["reward"] for r in rows]
        report = selection.select_problems(
            prompt_index,
            rewards,
            a.max_problems,
            a.success_threshold,
            truncated=[r["truncated"] for r in rows],
            lengths=[len(r["completion_ids"]) for r in rows],
        )
        if not report.selected:
            raise ValueError(
                f"No prompt has mixed success, so there is no contrast to learn from. {report.summary()} "
                f"{_pool_diagnosis(rows, a)}Use more generations (num_generations), problems the model sometimes "
                f"solves, or a higher temperature. The rollouts are kept in {self._kept_in()}."
            )
        keep = set(report.selected)
        row_ids = [i for i, r in enumerate(rows) if r["prompt_index"] in keep]
        advantages = selection.group_advantages(
            [rows[i]["prompt_index"] for i in row_ids], [rows[i]["reward"] for i in row_ids], a.advantage_clip
        )
        # rows with A = 0 (NaN reward) never train: leave them out of scoring and of the τ calibration
        kept = [(i, adv) for i, adv in zip(row_ids, advantages, strict=True) if adv != 0]
        row_ids, advantages = [i for i, _ in kept], [adv for _, adv in kept]
        selected = [rows[i] for i in row_ids]
        scores = self._scores(rows, row_ids)
        entropies = [scores[i][0] for i in row_ids]
        masks, tau = gating.build_fork_masks(
            entropies, a.fork_gate, a.fork_threshold, a.fork_fraction, a.fork_scope, a.fork_topk, a.seed
        )
        for row, i, adv, mask in zip(selected, row_ids, advantages, masks, strict=True):
            row.update(advantage=adv, fork_mask=mask, logps=scores[i][1])
        pairs = build_pairs(selected, seed=a.seed, preference=a.loss_type == "fork_dpo")
        per_step = a.per_device_train_batch_size * a.world_size
        if not pairs or (a.dataloader_drop_last and len(pairs) < per_step):
            too_few = (
                "no training item"
                if not pairs
                else f"{len(pairs)} training items, fewer than one batch ({per_step}) with dataloader_drop_last"
            )
            raise ValueError(
                f"The offline phase left {too_few} to train on. {report.summary()} Only rollouts with a non-zero "
                "advantage (a reward off their prompt's mean) train. Use more problems (train_dataset, max_problems) or more "
                f"generations{', or dataloader_drop_last=False' if pairs else ''}. The rollouts are kept in "
                f"{self._kept_in()}."
            )
        self.pool_stats = _pool_stats(rows, selected, entropies, masks, tau, report, len(pairs))
        for key, value in self.pool_stats.items():  # logged with the first training step
            self._metrics["train"][key].append(value)
        logger.info("ReasonMaxxer pool: %s %d training items (rollout pairs).", report.summary(), len(pairs))
        return Dataset.from_list(pairs)

    def _kept_in(self) -> str:
        return self.rollout_cache_dir if self.args.rollout_cache else "memory only (rollout_cache=False)"

    def _scores(self, rows: list[dict], row_ids: list[int]) -> dict[int, tuple[list[float], list[float]]]:
        """Entropy and base log-probs for ``row_ids``: from the given pool's columns, else scored (and cached)."""
        if all(rows[i].get("entropy") is not None for i in row_ids):
            return {i: (rows[i]["entropy"], rows[i]["logps"]) for i in row_ids}

        def score(sequences):
            with use_adapter(self.model, None):
                return score_rollouts(
                    self.model,
                    sequences,
                    self._tokenizer.pad_token_id,
                    self.args.scoring_batch_size,
                    disable_progress=self.args.disable_tqdm,
                )

        acc = self.accelerator
        mine = pool.score_pool(
            score,
            rows,
            row_ids,
            self._cache(),
            self._rollout_chunk_size * self.args.num_generations,
            rank=acc.process_index,
            world=acc.num_processes,
        )
        return {i: scores for part in gather_object([mine]) for i, scores in part.items()}

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        # a checkpoint cut off mid-save is skipped (True) or named (a path) before the offline phase runs
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if self.train_dataset is None:
            self.train_dataset = self.prepare_training_data()
        # Generation reseeds the global RNG per chunk and a cached pool does not: reseed, so that the data order
        # (accelerate's sampler seeds from the global RNG) is the same whether the pool was generated or loaded,
        # which is what lets resume_from_checkpoint skip exactly the batches already trained.
        _seed_everything(self.args)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    # ---------------------------------------------------------------- training
    def _get_train_sampler(self, train_dataset=None):
        if not self.args.shuffle_dataset:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "prompt_index"] + [
                f"{side}_{key}"
                for side in ("chosen", "rejected")
                for key in ("completion_ids", "fork_mask", "logps", "advantage", "weight")
            ]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("ReasonMaxxerTrainer does not return outputs from compute_loss.")
        a = self.args
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # No [B, T, V] logits for either model: final hidden states here, the LM head in chunks in the loss
        hidden, last_logits = final_hidden_states(model, input_ids, attention_mask)
        unwrapped = self.accelerator.unwrap_model(model)
        head = unwrapped.get_output_embeddings()
        if not self._lm_head_checked:
            check_lm_head(head, hidden[:, -1:], last_logits)
            self._lm_head_checked = True
        ref_hidden = None
        if a.beta > 0:
            was_training = unwrapped.training
            unwrapped.eval()  # the reference is the base model's deterministic distribution, dropout on or off
            try:
                with torch.no_grad(), use_adapter(unwrapped, None), disable_gradient_checkpointing(unwrapped):
                    ref_hidden = final_hidden_states(unwrapped, input_ids, attention_mask)[0][:, :-1]
            finally:
                unwrapped.train(was_training)
        # position t of every shifted tensor is the distribution that predicts input token t + 1
        targets = input_ids[:, 1:]
        # the reference's head is the base head even when the LoRA adapts lm_head (chunks run outside the
        # adapter-disabled block above, and again in backward)
        logps, kl = chunked_logps_and_kl(
            hidden[:, :-1], head, targets, ref_hidden, base_lm_head(head), chunk_size=LOSS_CHUNK_TOKENS
        )
        valid = attention_mask[:, 1:].bool()
        completion = inputs["completion_mask"][:, 1:].bool()
        fork = inputs["fork_mask"][:, 1:] & completion
        anchor = (valid if a.kl_on_prompt else completion) & ~fork
        base_logps = inputs["base_logps"][:, 1:]
        advantages = inputs["advantages"]
        loss, parts = reasonmaxxer_loss(
            a.loss_type,
            logps,
            base_logps,
            advantages,
            fork,
            anchor,
            inputs["weights"],
            kl=kl,
            beta=a.beta,
            epsilon=a.epsilon,
            dpo_beta=a.dpo_beta,
            neg_prob_floor=a.neg_prob_floor,
        )
        self._log_batch_metrics(parts, logps.detach() - base_logps, advantages, fork, completion)
        return loss

    def _log_batch_metrics(self, parts, delta, advantages, fork, completion) -> None:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        m = self._metrics[mode]
        for name, value in parts.items():
            m[name].append(gather(value.reshape(1)).mean().item())
        m["fork/fraction"].append(gather(fork.sum() / completion.sum().clamp(min=1)).mean().item())
        for name, sign in (("dlogp_pos", advantages > 0), ("dlogp_neg", advantages < 0)):
            sel = fork & sign[:, None]
            if sel.any():
                m[f"fork/{name}"].append(delta[sel].mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(v) / len(v) for key, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    @property
    def rollout_engine_name(self) -> str:
        """What the offline rollouts are sampled with: ``"vllm"``, ``"llama.cpp"`` or ``"transformers"``."""
        return "vllm" if self._use_vllm else "transformers" if self._llama_rollouts is None else "llama.cpp"

    # ---------------------------------------------------------------- model card and Hub
    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card plus the ReasonMaxxer section: rollout/selection/gate/loss settings, base precision, pool."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        base = model.get_base_model()
        quantization = getattr(base.config, "quantization_config", None)
        if quantization is not None and not isinstance(quantization, dict):
            quantization = quantization.to_dict()
        a = self.args
        precision = hub.describe_precision(
            quantization,
            str(next(p.dtype for n, p in base.named_parameters() if "lora_" not in n)).removeprefix("torch."),
            str(base.get_output_embeddings().weight.dtype).removeprefix("torch."),
            "bf16" if a.bf16 else "fp16" if a.fp16 else "none",
        )
        lora = model.peft_config.get(model.active_adapter)
        section = hub.card_section(hub.card_settings(a, lora.to_dict() if lora else None), self.pool_stats, precision)
        path = os.path.join(a.output_dir, "README.md")
        with open(path, encoding="utf-8") as f:
            card = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(hub.insert_section(card, section))

    def push_to_hub(
        self, commit_message="End of training", blocking=True, token=None, revision=None, private=None, **kwargs
    ):
        """Upload the adapter, tokenizer files and model card in ``output_dir`` to ``hub_model_id`` (not the rollout
        cache or checkpoints). Everything is saved locally first: a failed upload raises
        [`~trl_reasonmaxxer.hub.HubPushError`] naming the folder and the command to retry, and loses nothing."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        # Trainer.push_to_hub creates the repo before saving anything; save first (every rank, as
        # FSDP/DeepSpeed gathers need) so that a network failure cannot cost the trained adapter.
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        a = self.args
        model_name = kwargs.pop("model_name", None) or Path(a.hub_model_id or a.output_dir).name
        self.create_model_card(model_name=model_name, **kwargs)
        try:
            if self.hub_model_id is None:
                self.init_hf_repo(token=token, private=private)
            self._finish_current_push()
            return hf_api().upload_folder(
                repo_id=self.hub_model_id,
                folder_path=a.output_dir,
                commit_message=commit_message,
                token=token if token is not None else a.hub_token,
                run_as_future=not blocking,
                ignore_patterns=hub.HUB_IGNORE_PATTERNS,
                revision=revision if revision is not None else a.hub_revision,
            )
        except Exception as err:
            repo_id = self.hub_model_id or a.hub_model_id or Path(a.output_dir).absolute().name
            raise hub.HubPushError(hub.push_failed_message(err, repo_id, a.output_dir)) from err

    def _save_checkpoint(self, model, trial):
        name = self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id else Path(self.args.output_dir).name
        self.create_model_card(model_name=name)
        super()._save_checkpoint(model, trial)


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


def _seed_everything(args) -> None:
    """Seed as Trainer does (python, numpy, torch; deterministic kernels with ``full_determinism``)."""
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


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


def _disable_dropout(model) -> None:
    """TRL's ``disable_dropout_in_model`` zeroes ``nn.Dropout`` modules; most attention classes (Llama, Qwen2,
    Mistral) read their dropout from a float ``attention_dropout`` at forward time instead, so zero those too."""
    disable_dropout_in_model(model)
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _check_prompt_dataset(dataset) -> None:
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
    missing = [c for c in pool.POOL_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"rollout_dataset has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} (columns: "
            f"{dataset.column_names}). Pass a pool built by ReasonMaxxerTrainer.build_rollout_dataset(), with "
            f"{', '.join(pool.POOL_COLUMNS)} and either `reward` or reward_funcs."
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


def _pool_diagnosis(rows: list[dict], args) -> str:
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


def _pool_stats(rows, selected, entropies, masks, tau, report, num_pairs) -> dict[str, float]:
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
