"""``ReasonMaxxerTrainer``: a drop-in for TRL's GRPOTrainer that replaces online RL with one offline pass."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import textwrap
import weakref
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training
from torch.utils.data import SequentialSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.trainer_utils import enable_full_determinism, set_seed
from transformers.utils import hf_api, is_peft_available
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, use_adapter

from . import hub
from .collator import DataCollatorForForkPairs
from .config import ReasonMaxxerConfig, default_lora_config
from .evaluation import check_model_path
from .inputs import (
    acquire_output_dir_lock,
    check_datasets,
    check_grpo_only_arguments,
    check_quantization_supported,
    check_reward_funcs,
    check_rollout_dataset,
    release_output_dir_lock,
    resolve_resume_checkpoint,
)
from .losses import chunked_logps_and_kl, reasonmaxxer_loss
from .offline import OfflinePhase
from .rewards import resolve_reward_funcs
from .scoring import base_lm_head, check_lm_head, final_hidden_states


logger = logging.getLogger(__name__)

# Tokens whose full-vocabulary fp32 logits the loss holds at once (≈ 78 MiB each with a 151,936-token vocabulary)
LOSS_CHUNK_TOKENS = 128


def quantized_device_map() -> dict[str, int]:
    """Each process loads its whole quantized copy on its own GPU: bitsandbytes weights cannot be moved after
    loading, and ``device_map="auto"`` would spread every rank's copy over all GPUs."""
    return {"": PartialState().local_process_index}


class ReasonMaxxerTrainer(_BaseTrainer):
    """Trainer for ReasonMaxxer (Akgül et al., 2026): RL for reasoning replaced by sparse, offline policy selection.

    ``train()`` first runs the offline phase once (rollouts of the frozen base model, rewards, selection of
    mixed-success prompts, entropy scoring, fork gating, preference pairs; cached under ``output_dir``), then trains
    a LoRA adapter with an advantage-weighted loss at fork tokens plus a KL anchor to the base model (the same model
    with its adapter disabled) elsewhere.

    The constructor is GRPOTrainer's, so a GRPO script runs after renaming ``GRPOTrainer``/``GRPOConfig``.

    Args:
        model (`str` or `PreTrainedModel`): model id or path, or a loaded causal LM (a PeftModel is trained as is).
        reward_funcs (callable, name, or a list of them): GRPO-convention reward functions; a name is a dotted path
            or a function of `trl_reasonmaxxer.rewards` / `trl.rewards` (`rewards.resolve_reward_funcs`).
        args ([`ReasonMaxxerConfig`]): configuration; defaults to the paper's settings.
        train_dataset (`Dataset`): a `prompt` column (text or chat messages) plus the columns rewards read.
        eval_dataset: not used (a warning): evaluate the adapter with `trl_reasonmaxxer.evaluation`.
        processing_class: tokenizer; loaded from the model when None.
        reward_processing_classes: no effect (a warning): reward models are not supported.
        callbacks, optimizers: as in `Trainer`.
        quantization_config: loads `model` (an id or path) in 4/8 bits for QLoRA (bitsandbytes and a CUDA GPU).
        peft_config (`LoraConfig`): the adapter; the paper's r=32/α=64 q/k/v/o LoRA when None.
        tools, rollout_func, environment_factory: GRPO's agentic rollouts, refused.
        rollout_dataset (`Dataset`, optional): a pool built earlier (see [`build_rollout_dataset`]); skips
            generation and scoring where it has them.

    The offline phase is [`~offline.OfflinePhase`] (``self.offline``); [`prepare_training_data`] runs it.
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
        # Args
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
        check_grpo_only_arguments(
            args, tools, rollout_func, environment_factory, reward_processing_classes, eval_dataset
        )

        # Datasets and reward functions
        needs_rewards = check_datasets(train_dataset, rollout_dataset)
        self.reward_funcs = resolve_reward_funcs(reward_funcs)
        check_reward_funcs(self.reward_funcs, args.reward_weights, needs_rewards)

        # Output directory: claimed before any work, so a read-only one, or one another run uses, is refused now
        if args.process_index == 0:
            lock = acquire_output_dir_lock(args.output_dir)
            weakref.finalize(self, release_output_dir_lock, lock)

        # Model
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

        # Processing class
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

        # PEFT
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

        # Rollout dataset: its token ids against this model's vocabulary
        if rollout_dataset is not None:
            check_rollout_dataset(
                rollout_dataset,
                model.get_input_embeddings().num_embeddings,
                len(train_dataset) if needs_rewards else None,
            )

        # Initialize the Trainer: train_dataset is built by the offline phase (prepare_training_data)
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

        # Offline phase
        self.offline = OfflinePhase(
            self.model, tokenizer, args, self.accelerator, train_dataset, rollout_dataset, self.reward_funcs
        )

    # ---------------------------------------------------------------- offline phase (offline.py)
    @property
    def rollout_cache_dir(self) -> str:
        """Where this model/prompts/sampling combination caches its rollouts (``<rollout_cache_root>/<key>``)."""
        return self.offline.cache_dir

    @property
    def rollout_engine_name(self) -> str:
        """What the offline rollouts are sampled with: ``"vllm"``, ``"llama.cpp"`` or ``"transformers"``."""
        return self.offline.engine_name

    def build_rollout_dataset(self) -> Dataset:
        """Run (or resume) rollouts and rewards for every prompt; returns the pool, one row per rollout.

        Columns: ``prompt_index``, ``prompt_ids``, ``completion_ids``, ``completion``, ``truncated``, ``reward`` and
        ``rewards/<function>``. Also saved under ``rollout_cache_dir/pool``. With several processes each one
        generates and rewards its shard of the chunks, and every process gets the one-process pool
        ([`~offline.OfflinePhase.build_pool`]).
        """
        return Dataset.from_list(self.offline.build_pool(self._trainer_reward_kwargs()))

    def prepare_training_data(self) -> Dataset:
        """The offline phase end to end: pool → selection → advantages → scoring → fork gates → training items.

        Sets and returns ``train_dataset``; the pool statistics go to ``pool_stats`` and are logged with the first
        training step.
        """
        items, self.pool_stats = self.offline.run(self._trainer_reward_kwargs())
        for key, value in self.pool_stats.items():
            self._metrics["train"][key].append(value)
        self.train_dataset = Dataset.from_list(items)
        return self.train_dataset

    def _trainer_reward_kwargs(self) -> dict:
        """What GRPOTrainer passes reward functions besides the dataset columns."""
        return {
            "trainer_state": self.state,
            "log_metric": lambda name, value: self._metrics["train"][name].append(value),
            "log_extra": lambda column, values: None,
        }

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        # a checkpoint cut off mid-save is skipped (True) or named (a path) before the offline phase runs
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if self.train_dataset is None:
            self.prepare_training_data()
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


def _disable_dropout(model) -> None:
    """TRL's ``disable_dropout_in_model`` zeroes ``nn.Dropout`` modules; most attention classes (Llama, Qwen2,
    Mistral) read their dropout from a float ``attention_dropout`` at forward time instead, so zero those too."""
    disable_dropout_in_model(model)
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
