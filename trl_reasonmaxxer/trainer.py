"""``ReasonMaxxerTrainer``: a drop-in for TRL's GRPOTrainer that replaces online RL with one offline pass."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from peft import LoraConfig, PeftConfig, get_peft_model, prepare_model_for_kbit_training
from torch.utils.data import SequentialSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.trainer_utils import enable_full_determinism, set_seed
from transformers.utils import hf_api, is_peft_available
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, use_adapter

from . import gating, hub, pool, selection
from .collator import DataCollatorForForkPairs, build_pairs
from .config import ReasonMaxxerConfig
from .llama_engine import rollout_engine
from .losses import chunked_logps_and_kl, reasonmaxxer_loss
from .rollouts import generate_completions, tokenize_prompt
from .scoring import base_lm_head, check_lm_head, final_hidden_states, score_rollouts
from .vllm_backend import VLLMRollouts, resolve_use_vllm


logger = logging.getLogger(__name__)

PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Tokens whose full-vocabulary fp32 logits the loss holds at once (≈ 78 MiB each with a 151,936-token vocabulary)
LOSS_CHUNK_TOKENS = 128


def default_lora_config(model) -> LoraConfig:
    """The paper's adapter: rank 32, alpha 64, no dropout, on the attention q/k/v/o projections."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in PAPER_LORA_TARGETS if t not in names]
    if missing:
        raise ValueError(
            f"The default LoRA targets {PAPER_LORA_TARGETS} but this model has no {missing} modules. Pass "
            "peft_config=LoraConfig(target_modules=[...]) naming this architecture's attention projections."
        )
    return LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=PAPER_LORA_TARGETS, task_type="CAUSAL_LM")


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
    if callable(func):
        return func
    if isinstance(func, str):
        if "." in func:
            module, _, name = func.rpartition(".")
            return getattr(importlib.import_module(module), name)
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
        if rollout_dataset is None or "reward" not in rollout_dataset.column_names:
            _check_prompt_dataset(train_dataset)
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs] if reward_funcs else []
        self.reward_funcs = [resolve_reward_func(f) for f in funcs]
        needs_rewards = rollout_dataset is None or "reward" not in rollout_dataset.column_names
        if needs_rewards and not self.reward_funcs:
            raise ValueError(
                "reward_funcs is required: pass at least one reward function (e.g. math_accuracy_reward)."
            )

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
            model = create_model_from_path(model, **init_kwargs)
        elif quantization_config is not None:
            raise ValueError("quantization_config needs `model` as an id or path: the model is already loaded.")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
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
            disable_dropout_in_model(model)

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
            self._cached_prompt_ids = [
                tokenize_prompt(self._tokenizer, p, self.args.chat_template_kwargs)
                for p in self.prompt_dataset["prompt"]
            ]
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
        extra = dict(a.generation_kwargs or {})
        if a.repetition_penalty != 1.0:
            extra["repetition_penalty"] = a.repetition_penalty
        if a.min_p is not None:
            extra["min_p"] = a.min_p
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
                batch_size=a.rollout_batch_size,
                seed=a.seed + indices[0],
                desc="Rollouts",
                generation_kwargs=extra,
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
        prompt_index = [r["prompt_index"] for r in rows]
        rewards = [r["reward"] for r in rows]
        report = selection.select_problems(prompt_index, rewards, a.max_problems)
        if not report.selected:
            raise ValueError(
                f"No prompt has mixed success, so there is no contrast to learn from. {report.summary()} Use more "
                "generations (num_generations), problems the model sometimes solves, or a higher temperature. "
                f"The rollouts are kept in {self.rollout_cache_dir}."
            )
        keep = set(report.selected)
        row_ids = [i for i, r in enumerate(rows) if r["prompt_index"] in keep]
        selected = [rows[i] for i in row_ids]
        advantages = selection.group_advantages(
            [r["prompt_index"] for r in selected], [r["reward"] for r in selected], a.advantage_clip
        )
        scores = self._scores(rows, row_ids)
        entropies = [scores[i][0] for i in row_ids]
        masks, tau = gating.build_fork_masks(
            entropies, a.fork_gate, a.fork_threshold, a.fork_fraction, a.fork_scope, a.fork_topk, a.seed
        )
        for row, i, adv, mask in zip(selected, row_ids, advantages, masks, strict=True):
            row.update(advantage=adv, fork_mask=mask, logps=scores[i][1])
        pairs = build_pairs(selected, seed=a.seed)
        self.pool_stats = _pool_stats(rows, selected, entropies, masks, tau, report, len(pairs))
        for key, value in self.pool_stats.items():  # logged with the first training step
            self._metrics["train"][key].append(value)
        logger.info("ReasonMaxxer pool: %s %d preference pairs.", report.summary(), len(pairs))
        return Dataset.from_list(pairs)

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
            with torch.no_grad(), use_adapter(unwrapped, None), disable_gradient_checkpointing(unwrapped):
                ref_hidden = final_hidden_states(unwrapped, input_ids, attention_mask)[0][:, :-1]
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


def _seed_everything(args) -> None:
    """Seed as Trainer does (python, numpy, torch; deterministic kernels with ``full_determinism``)."""
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def _check_prompt_dataset(dataset) -> None:
    if dataset is None:
        raise ValueError("train_dataset is required: a datasets.Dataset with a `prompt` column.")
    if not isinstance(dataset, Dataset):
        raise TypeError(f"train_dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"train_dataset has no `prompt` column (columns: {dataset.column_names}). Rename your question column "
            "to `prompt` (a string, or a list of chat messages) as GRPOTrainer expects."
        )
    if len(dataset) == 0:
        raise ValueError("train_dataset is empty: ReasonMaxxer needs prompts to sample rollouts from.")


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
