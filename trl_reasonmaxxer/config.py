"""``ReasonMaxxerConfig``: GRPOConfig's arguments, the paper's defaults, and ReasonMaxxer's own knobs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers.trainer_utils import HubStrategy
from trl import GRPOConfig
from trl.trainer.base_config import _BaseConfig


logger = logging.getLogger(__name__)

LOSS_TYPES = ("adv_ce", "adv_ratio", "fork_dpo")
# GRPO's loss names: a GRPO script may set one, and it falls back to ReasonMaxxer's default with a warning
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
FORK_GATES = ("entropy", "random", "all")
FORK_SCOPES = ("pool", "rollout")
PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


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


# GRPOConfig fields that mean something here; every other GRPO-only field is accepted and reported once.
HONOURED_GRPO_FIELDS = frozenset(
    {
        "model_init_kwargs",
        "trust_remote_code",
        "disable_dropout",
        "num_generations",
        "max_completion_length",
        "shuffle_dataset",
        "pad_to_multiple_of",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "generation_kwargs",
        "chat_template_kwargs",
        "repetition_penalty",
        "beta",
        "epsilon",
        "reward_weights",
        "loss_type",
        "mask_truncated_completions",
        "use_vllm",
        "vllm_mode",
        "vllm_model_impl",
        "vllm_enable_sleep_mode",
        "vllm_server_base_url",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_timeout",
        "vllm_gpu_memory_utilization",
        "vllm_max_model_length",
        "vllm_tensor_parallel_size",
    }
)
VLLM_MODES = ("colocate", "server")
HUB_STRATEGIES = tuple(s.value for s in HubStrategy)  # end, every_save, checkpoint, all_checkpoints


@dataclass
class ReasonMaxxerConfig(GRPOConfig):
    r"""
    Configuration class for the [`ReasonMaxxerTrainer`].

    It accepts every [`~trl.GRPOConfig`] argument, so a GRPO script runs unchanged; arguments with no ReasonMaxxer
    meaning (vLLM importance sampling and weight sync, GRPO loss variants, ...) are reported once as having no effect.
    Listed here are ReasonMaxxer's own parameters and the GRPOConfig ones whose meaning or default differs. Defaults
    follow the paper (Akgül et al., 2026, Table 6); see the note at the end.

    Using [`~transformers.HfArgumentParser`] we can turn this class into
    [argparse](https://docs.python.org/3/library/argparse#module-argparse) arguments that can be specified on the
    command line.

    Parameters:
        > Parameters that control the offline rollouts (sampled once from the frozen base model)

        num_generations (`int`, *optional*, defaults to `20`):
            Rollouts per prompt. At least 2: selection needs both successes and failures of the same prompt.
        temperature (`float`, *optional*, defaults to `0.6`):
            Sampling temperature of the rollouts (> 0: a prompt's greedy rollouts would all be the same).
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling of the rollouts. `top_k`, `min_p`, `repetition_penalty` and `generation_kwargs` are
            passed to `generate` too; as in GRPO, a `generation_kwargs` key naming one of these settings (or
            `max_new_tokens`) overrides it.
        max_completion_length (`int`, *optional*, defaults to `512`):
            Maximum new tokens per rollout; a rollout that hits it is flagged `truncated`. GRPOConfig's default, not
            the paper's 8192: every `generate` call decodes as long as its longest row, so the cap sets the cost of the
            offline phase, and 8192 is out of reach on a CPU. Long-reasoning tasks (MATH) on a GPU want 2048-8192; a
            warning names this field when more than 20% of the pool is truncated (`pool/truncation_rate`).
        rollout_batch_size (`int`, *optional*, defaults to `32`):
            Sequences per `generate` call.
        rollout_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Prompts per cached chunk: an interrupted offline phase resumes at the first missing chunk. `None`: the
            smallest multiple of the prompts per `generate` call (`rollout_batch_size // num_generations`) that is at
            least 8, so no chunk ends in a short extra `generate` call.
        scoring_batch_size (`int`, *optional*, defaults to `4`):
            Sequences per teacher-forced scoring forward (entropy and log-probs of the base model).
        rollout_cache (`bool`, *optional*, defaults to `True`):
            Cache rollouts and scores under `output_dir/rollouts/<fingerprint>` and reuse them on the next run with
            the same model, prompts and generation settings. With several processes each one generates and scores its
            share of the chunks, and the pool does not depend on the number of processes.
        rollout_cache_root (`str` or `None`, *optional*, defaults to `None`):
            Folder of the rollout caches (`<rollout_cache_root>/<fingerprint>`: the trainer's `rollout_cache_dir`);
            `None`: `output_dir/rollouts`. Runs with their own `output_dir` (their own checkpoints) share one offline
            phase by pointing here, e.g. a sweep of `fork_threshold` or `beta` on one pool. Chunks are written whole,
            so two runs at once never corrupt it, but each would sample what the other has not saved yet: run them
            one after the other.

        > Parameters that control vLLM rollouts (GRPOConfig's names)

        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample the rollouts with vLLM instead of `generate`: the same rows, seeded per prompt. Without vLLM
            installed it falls back to `generate` with one warning (`pip install trl-reasonmaxxer[vllm]`).
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            `"colocate"`: one engine per training process, alive during the offline phase only
            (`vllm_gpu_memory_utilization`, `vllm_max_model_length`, `vllm_model_impl`, `vllm_tensor_parallel_size`,
            which must be 1 with several processes). `"server"`: a running `trl vllm-serve` or `vllm serve` of the
            base model (`vllm_server_base_url` or `vllm_server_host`/`vllm_server_port`, `vllm_server_timeout`). No
            weights are synchronised: the adapter is untrained while the rollouts are sampled.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Colocate: put the engine to sleep (level 2) after the offline phase, so training gets all its GPU memory
            back.

        > Parameters that control llama.cpp rollouts on CPU (the `cpu` extra)

        use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample the rollouts with llama.cpp from a GGUF of the model: the same rows, about 4x faster than float32
            `generate` on CPU, seeded per prompt; log-probs for the loss still come from the model itself. `None`
            (auto): on when there is no CUDA GPU, `pip install 'trl-reasonmaxxer[cpu]'` is installed, a GGUF is at hand
            (the embedded default model's, or `llama_cpp_model_path`), `repetition_penalty` is 1 and
            `generation_kwargs` set nothing but the sampling fields above (those it samples with, as `generate` does).
            `True` makes a missing piece an error.
        llama_cpp_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model as a GGUF file (its vocabulary must be the tokenizer's). Not needed for the embedded default
            model.
        llama_cpp_n_threads (`int` or `None`, *optional*, defaults to `None`):
            llama.cpp threads; `None`: the cores other processes leave free, measured at each call, at most
            `OMP_NUM_THREADS` or the cores this process may use (llama.cpp's threads wait for each other at every
            operation, so a thread sharing its core with another busy process slows them all down).

        > Parameters that control problem selection

        max_problems (`int`, *optional*, defaults to `50`):
            Number of mixed-success prompts (0 < pass rate < 1) kept, those closest to a pass rate of 0.5 (ties: fewer
            truncated rollouts, then shorter mean completion, then dataset order, as in the authors' code).
        success_threshold (`float` or `None`, *optional*, defaults to `None`):
            A rollout counts as solved, for pass rates and selection, when its (weighted) reward is above this.
            `None`: halfway between the lowest and highest reward in the pool (0.5 if they are equal), i.e. 0.5 for a
            0/1 verifier (the paper) and the same split for any scale (`0.4 × accuracy`, ±1). Set it for graded or
            combined rewards, e.g. `0.9` when accuracy is worth 1 and a format bonus 0.2.
        advantage_clip (`float`, *optional*, defaults to `2.5`):
            Advantages `(r - mean) / std` per prompt (population std) are clipped to `±advantage_clip`.

        > Parameters that control the fork-token gate

        fork_gate (`str`, *optional*, defaults to `"entropy"`):
            `"entropy"` (the method), `"random"` (control: the same number of positions per rollout as the entropy
            gate, chosen uniformly with `seed`) or `"all"` (control: every completion token).
        fork_threshold (`float` or `None`, *optional*, defaults to `None`):
            Absolute entropy threshold τ in nats (a position is a fork when `H > τ`). `None` calibrates τ on the
            selected pool so that `fork_fraction` of its completion tokens are forks.
        fork_fraction (`float`, *optional*, defaults to `0.03`):
            Target share of completion tokens gated, about the top 3% by base entropy as in the paper.
        fork_scope (`str`, *optional*, defaults to `"pool"`):
            `"pool"`: one τ for the whole pool. `"rollout"`: the top `fork_fraction` (or `fork_topk`) positions of each
            rollout by entropy.
        fork_topk (`int` or `None`, *optional*, defaults to `None`):
            With `fork_scope="rollout"`, gate exactly this many positions per rollout (fewer if it is shorter).

        > Parameters that control the loss

        loss_type (`str`, *optional*, defaults to `"adv_ce"`):
            `"adv_ce"`: the paper's loss, mean over forks of `-A·log π(token)` plus `beta` × mean KL(π_base ‖ π) over
            the other valid positions. `"adv_ratio"`: a clipped variant, PPO's clipped surrogate with the base model
            as the old policy (`epsilon`). `"fork_dpo"`: a bounded pairwise loss, `-log σ(dpo_beta · margin)` where
            margin is the chosen-minus-rejected mean fork-token log-ratio to the base. GRPO loss names (`"dapo"`,
            `"grpo"`, ...) fall back to `"adv_ce"` with a warning; any other name is an error.
        beta (`float`, *optional*, defaults to `0.2`):
            Weight of the KL anchor to the base model (the reference is the same model with the adapter disabled).
        epsilon (`float`, *optional*, defaults to `0.2`):
            Clip range of `"adv_ratio"`.
        neg_prob_floor (`float` or `None`, *optional*, defaults to `None`):
            Bounds `"adv_ce"`: a negative-advantage fork token stops being pushed down once its probability is below
            this floor. `None` is the paper's unbounded loss. The share of negative fork tokens it exempts is logged
            as `fork/neg_floored`.
        dpo_beta (`float`, *optional*, defaults to `1.0`):
            Inverse temperature of `"fork_dpo"` (its margin is a per-token mean log-ratio, hence larger than DPO's
            0.1).
        kl_on_prompt (`bool`, *optional*, defaults to `True`):
            Include prompt positions in the KL anchor, as the paper does.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Turn off the model's dropout (LoRA dropout included) for training, as DPOConfig does (GRPOConfig:
            `False`): the fork targets and base log-probs were scored without dropout, and the paper's models have
            none. The KL anchor's reference forward runs in eval mode either way.

        > Parameters that control the training

        learning_rate (`float`, *optional*, defaults to `1e-4`):
            AdamW learning rate of the LoRA (the authors' code: 1e-4).
        per_device_train_batch_size (`int`, *optional*, defaults to `1`):
            Training items per device per step; each item is two rollouts of one prompt.
        gradient_accumulation_steps (`int`, *optional*, defaults to `4`):
            4 items = 8 rollouts per optimiser step, as in the paper.
        warmup_steps (`float`, *optional*, defaults to `50`):
            Linear warm-up steps (a float < 1 is a ratio of the training steps).
        num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs over the selected rollouts (`"fork_dpo"`: over its preference pairs).
        logging_steps (`float`, *optional*, defaults to `5`):
            Log every N optimiser steps (the pool statistics with the first one).
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            bf16 mixed precision; `None` turns it on when the GPU supports it (never on CPU).

        > Parameters that control the Hub upload

        hub_strategy (`str`, *optional*, defaults to `"end"`):
            With `push_to_hub=True`, upload once, at the end, through [`ReasonMaxxerTrainer.push_to_hub`], which
            leaves the rollout cache and checkpoints out. Trainer's `"every_save"`/`"checkpoint"`/`"all_checkpoints"`
            strategies upload the whole `output_dir` at each save, the rollout cache included.

    > [!NOTE]
    > These parameters have default values different from [`~trl.GRPOConfig`], the paper's (Table 6 and the authors'
    > code) unless said otherwise:
    > - `num_generations`: `20` instead of `8`; `temperature`: `0.6` instead of `1.0`; `top_p`: `0.95` instead of
    >   `1.0`.
    > - `beta`: `0.2` instead of `0.0`; `loss_type`: `"adv_ce"` (the paper's loss) instead of `"dapo"`.
    > - `learning_rate`: `1e-4` instead of `1e-6`; `per_device_train_batch_size`: `1` (two rollouts) instead of
    >   `8`; `gradient_accumulation_steps`: `4` instead of `1`; `warmup_steps`: `50` instead of `0`;
    >   `num_train_epochs`: `1.0` instead of `3.0`.
    > - Not from the paper: `logging_steps`: `5` instead of `10` (the few steps of a run); `disable_dropout`: `True`
    >   instead of `False` (as DPOConfig); `bf16`: on where the GPU supports it; `hub_strategy`: `"end"` instead of
    >   `"every_save"` (keeps the rollout cache off the Hub).
    >
    > Where we depart from the paper: `max_completion_length` keeps GRPOConfig's `512` (the paper samples up to
    > 8192 tokens, out of reach on a CPU), and τ is calibrated to `fork_fraction` of the selected pool's tokens
    > instead of an absolute threshold swept per model family (`fork_threshold` sets one). docs/method.md lists the
    > rest ("Where we depart from the paper, and why").
    """

    # Parameters whose default values are overridden from GRPOConfig (the paper's, see the note above)
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (the authors' code: 1e-4)."})
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Training items per device per step (each item is two rollouts of a prompt)."}
    )
    gradient_accumulation_steps: int = field(
        default=4, metadata={"help": "4 items = 8 rollouts per optimiser step, as in the paper."}
    )
    warmup_steps: float = field(default=50, metadata={"help": "Linear warm-up steps (a float < 1 is a ratio)."})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Epochs over the selected rollouts (fork_dpo: over its preference pairs)."}
    )
    logging_steps: float = field(default=5, metadata={"help": "Log every N optimiser steps."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; None means on when the GPU supports it."}
    )

    # Parameters that control the offline rollouts (sampled once from the frozen base model)
    num_generations: int | None = field(default=20, metadata={"help": "Rollouts per prompt (>= 2)."})
    temperature: float = field(default=0.6, metadata={"help": "Rollout sampling temperature (> 0)."})
    top_p: float = field(default=0.95, metadata={"help": "Rollout nucleus sampling."})
    max_completion_length: int | None = field(
        default=512,
        metadata={
            "help": "Maximum new tokens per rollout. GRPO's default; the paper samples up to 8192 (too slow on CPU). "
            "A warning names it when over a fifth of the rollouts are truncated."
        },
    )
    rollout_batch_size: int = field(default=32, metadata={"help": "Sequences per generate call."})
    rollout_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per cached (resumable) chunk; default: a multiple of the prompts per call."},
    )
    scoring_batch_size: int = field(default=4, metadata={"help": "Sequences per scoring forward."})
    rollout_cache: bool = field(default=True, metadata={"help": "Cache and reuse rollouts under output_dir."})
    rollout_cache_root: str | None = field(
        default=None,
        metadata={"help": "Folder of the rollout caches; default output_dir/rollouts. Share it to share a pool."},
    )

    # Parameters that control vLLM rollouts (GRPOConfig's names)
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "colocate (an engine per training process, during the offline phase) or server (a running "
            "`trl vllm-serve` of the base model).",
            "choices": list(VLLM_MODES),
        },
    )

    # Parameters that control llama.cpp rollouts on CPU (the `cpu` extra)
    use_llama_cpp: bool | None = field(
        default=None,
        metadata={"help": "Rollouts with llama.cpp on CPU; None: when the cpu extra and a GGUF are there."},
    )
    llama_cpp_model_path: str | None = field(
        default=None, metadata={"help": "GGUF file of the model for llama.cpp (the default model has its own)."}
    )
    llama_cpp_n_threads: int | None = field(
        default=None, metadata={"help": "llama.cpp threads (None: the free cores)."}
    )

    # Parameters that control problem selection
    max_problems: int = field(default=50, metadata={"help": "Mixed-success prompts kept (closest to p=0.5)."})
    advantage_clip: float = field(default=2.5, metadata={"help": "Advantages are clipped to +-this."})
    success_threshold: float | None = field(
        default=None,
        metadata={
            "help": "A rollout is solved when its reward is above this; None: midway between min and max reward."
        },
    )

    # Parameters that control the fork-token gate
    fork_gate: str = field(
        default="entropy",
        metadata={
            "help": "entropy (the method), or the controls random (as many positions, uniform) and all (every token).",
            "choices": list(FORK_GATES),
        },
    )
    fork_threshold: float | None = field(default=None, metadata={"help": "Absolute entropy threshold (nats)."})
    fork_fraction: float = field(default=0.03, metadata={"help": "Target share of completion tokens gated."})
    fork_scope: str = field(
        default="pool",
        metadata={"help": "pool (one threshold) or rollout (per rollout).", "choices": list(FORK_SCOPES)},
    )
    fork_topk: int | None = field(default=None, metadata={"help": "Forks per rollout with fork_scope=rollout."})

    # Parameters that control the loss
    loss_type: str = field(
        default="adv_ce",
        metadata={
            "help": "adv_ce (the paper's), adv_ratio (clipped) or fork_dpo (pairwise); a GRPO loss name falls back to "
            "adv_ce with a warning.",
            "choices": list(LOSS_TYPES + GRPO_LOSS_TYPES),
        },
    )
    beta: float = field(default=0.2, metadata={"help": "KL-anchor weight."})
    neg_prob_floor: float | None = field(default=None, metadata={"help": "Probability floor bounding adv_ce."})
    dpo_beta: float = field(default=1.0, metadata={"help": "Inverse temperature of fork_dpo."})
    kl_on_prompt: bool = field(default=True, metadata={"help": "Include prompt positions in the KL anchor."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout (LoRA dropout included) during training, as DPOConfig does."}
    )

    # Parameters that control the Hub upload
    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "When to push with push_to_hub: end (adapter and card only) or Trainer's.",
            "choices": list(HUB_STRATEGIES),
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _bf16_supported()
        _check_loss_type(self)
        _apply_generation_kwargs(self)
        _check_sizes_and_ranges(self)
        _check_choice("fork_gate", self.fork_gate, FORK_GATES)
        _check_choice("fork_scope", self.fork_scope, FORK_SCOPES)
        _check_choice("vllm_mode", self.vllm_mode, VLLM_MODES)
        if self.fork_topk is not None and self.fork_scope != "rollout":
            logger.warning(
                "fork_topk=%d has no effect with fork_scope=%r: it gates a fixed number of positions per rollout "
                "only with fork_scope='rollout' (fork_scope='pool' uses fork_fraction or fork_threshold).",
                self.fork_topk,
                self.fork_scope,
            )
        if self.success_threshold is not None and not math.isfinite(self.success_threshold):
            raise ValueError(f"success_threshold must be a finite number or None, got {self.success_threshold}.")
        if self.use_llama_cpp and self.use_vllm:
            raise ValueError("use_llama_cpp=True and use_vllm=True: choose one rollout engine.")
        try:
            # GRPOConfig.__post_init__ would size GRPO's generation batches (num_generations must divide them);
            # the offline method has none, so only the base config's checks apply.
            _BaseConfig.__post_init__(self)
        except ValueError as err:
            if "bf16" in str(err):
                raise ValueError(
                    "bf16=True needs a GPU that supports it. On CPU, pass use_cpu=True or bf16=False."
                ) from err
            raise
        for name in ignored_grpo_arguments(self):
            logger.warning("%s=%r has no effect in ReasonMaxxer (a GRPO-only argument).", name, getattr(self, name))


# generation_kwargs keys that are this config's own sampling fields: as in GRPO, the generation_kwargs value wins
GENERATION_KWARGS_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_completion_length",  # HF generate's name
    "max_tokens": "max_completion_length",  # vLLM's name
}
# generation_kwargs keys the offline rollouts set themselves, and what to use instead
GENERATION_KWARGS_REFUSED = {
    "num_return_sequences": "num_generations",
    "n": "num_generations",
    "max_length": "max_completion_length (new tokens per rollout)",
    "seed": "seed",
    "pad_token_id": "the tokenizer's pad token (processing_class)",
    "eos_token_id": "the tokenizer's EOS and the model's generation_config.eos_token_id",
    "return_dict_in_generate": "nothing: the rollouts keep the generated token ids only",
}


def _check_loss_type(config) -> None:
    """ReasonMaxxer's losses are kept; a GRPO loss name falls back to ``adv_ce`` with a warning; anything else
    (a typo) is an error, since training the default loss instead would go unnoticed."""
    if config.loss_type in LOSS_TYPES:
        return
    if config.loss_type in GRPO_LOSS_TYPES:
        logger.warning(
            "loss_type=%r is a GRPO loss; ReasonMaxxer trains offline and uses 'adv_ce' instead (choices: %s).",
            config.loss_type,
            ", ".join(LOSS_TYPES),
        )
        config.loss_type = "adv_ce"
        return
    raise ValueError(
        f"loss_type must be one of {', '.join(LOSS_TYPES)} (or a GRPO loss name, {', '.join(GRPO_LOSS_TYPES)}, "
        f"which falls back to 'adv_ce'); got {config.loss_type!r}."
    )


def _check_int(name: str, value, minimum: int, optional: bool = False, hint: str = "") -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{' or None' if optional else ''}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.{' ' + hint if hint else ''}")


def _check_float(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    hint: str = "",
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if math.isnan(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
        interval += f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}.{' ' + hint if hint else ''}")


def _check_sizes_and_ranges(config) -> None:
    """Types and ranges of every size and weight the offline method reads: a value outside its range would be
    accepted and mean something else (a negative ``beta`` drops the KL anchor, a negative ``dpo_beta`` reverses
    the preference), or fail much later with an unrelated message."""
    if isinstance(config.num_generations, bool) or not isinstance(config.num_generations, numbers.Integral):
        if config.num_generations is not None:
            raise TypeError(f"num_generations must be an integer, got {config.num_generations!r}.")
    if config.num_generations is None or config.num_generations < 2:
        raise ValueError(
            f"num_generations must be at least 2 (got {config.num_generations}): selection keeps prompts with "
            "both correct and incorrect rollouts. The paper uses 20."
        )
    _check_int("max_problems", config.max_problems, 1)
    _check_int("rollout_batch_size", config.rollout_batch_size, 0, hint="(0 means one prompt per generate call.)")
    _check_int("rollout_chunk_size", config.rollout_chunk_size, 1, optional=True, hint="None picks a default.")
    _check_int("scoring_batch_size", config.scoring_batch_size, 1)
    _check_int("llama_cpp_n_threads", config.llama_cpp_n_threads, 1, optional=True, hint="None uses the free cores.")
    _check_int("per_device_train_batch_size", config.per_device_train_batch_size, 1)
    _check_int("gradient_accumulation_steps", config.gradient_accumulation_steps, 1)
    _check_int("max_completion_length", config.max_completion_length, 1, optional=True)
    _check_int(
        "fork_topk",
        config.fork_topk,
        1,
        optional=True,
        hint="It is the number of fork positions gated per rollout with fork_scope='rollout'; None uses "
        "fork_fraction.",
    )
    if isinstance(config.pad_to_multiple_of, str):  # GRPOConfig's "auto", or a CLI string
        value = config.pad_to_multiple_of.strip().lower()
        if value in ("auto", "none", "null"):
            config.pad_to_multiple_of = None
        elif value.isdigit():
            config.pad_to_multiple_of = int(value)
        else:
            raise ValueError(
                f"pad_to_multiple_of must be a positive integer, None or 'auto'; got {config.pad_to_multiple_of!r}."
            )
    _check_int("pad_to_multiple_of", config.pad_to_multiple_of, 1, optional=True)
    _check_float(
        "temperature",
        config.temperature,
        0.0,
        low_open=True,
        hint=(
            "Rollouts are sampled: use a small positive temperature (e.g. 0.1) for near-greedy sampling; greedy "
            "decoding would make a prompt's rollouts identical, so no prompt would have mixed success."
        ),
    )
    _check_float("top_p", config.top_p, 0.0, 1.0, low_open=True)
    _check_float("beta", config.beta, 0.0, hint="It weights the KL anchor; 0 disables it.")
    _check_float(
        "epsilon",
        config.epsilon,
        0.0,
        low_open=config.loss_type == "adv_ratio",
        hint=("It is the clip range of loss_type='adv_ratio'."),
    )
    _check_float(
        "dpo_beta",
        config.dpo_beta,
        0.0,
        low_open=True,
        hint=("It is the inverse temperature of loss_type='fork_dpo'; a negative value would reverse the preference."),
    )
    _check_float(
        "advantage_clip",
        config.advantage_clip,
        0.0,
        low_open=True,
        hint=(
            "Advantages are clipped to +-advantage_clip; 0 would zero every advantage and leave no pair to train on."
        ),
    )
    _check_float("fork_fraction", config.fork_fraction, 0.0, 1.0, low_open=True)
    _check_float("fork_threshold", config.fork_threshold, optional=True)
    _check_float(
        "neg_prob_floor",
        config.neg_prob_floor,
        0.0,
        1.0,
        low_open=True,
        high_open=True,
        optional=True,
        hint=(
            "It is a probability below which a negative-advantage fork token stops being pushed down; None is the "
            "paper's unbounded loss."
        ),
    )


def _apply_generation_kwargs(config) -> None:
    """``generation_kwargs`` override the config's own sampling fields, as in GRPO; keys the offline rollouts set
    themselves are refused with what to use instead."""
    kwargs = config.generation_kwargs
    if isinstance(kwargs, str) and kwargs.strip().startswith("{"):  # a JSON string from the command line
        kwargs = json.loads(kwargs)
    if not kwargs:
        config.generation_kwargs = None
        return
    if not isinstance(kwargs, dict):
        raise TypeError(f"generation_kwargs must be a dict, got {type(kwargs).__name__}.")
    refused = {k: GENERATION_KWARGS_REFUSED[k] for k in kwargs if k in GENERATION_KWARGS_REFUSED}
    if refused:
        raise ValueError(
            "generation_kwargs sets what ReasonMaxxer's rollouts set themselves: "
            + "; ".join(f"{k!r} (use {instead})" for k, instead in refused.items())
            + "."
        )
    if "do_sample" in kwargs:
        if not kwargs["do_sample"]:
            raise ValueError(
                "generation_kwargs={'do_sample': False} asks for greedy rollouts, but ReasonMaxxer samples "
                "num_generations rollouts per prompt and keeps prompts where some succeed and some fail; greedy "
                "rollouts of a prompt are identical. Use a small temperature (e.g. 0.1) instead."
            )
        kwargs = {k: v for k, v in kwargs.items() if k != "do_sample"}  # rollouts are always sampled
    for key, value in kwargs.items():
        name = GENERATION_KWARGS_FIELDS.get(key)
        if name is not None and getattr(config, name) != value:
            logger.info(
                "generation_kwargs[%r]=%r overrides %s=%r, as in GRPO.", key, value, name, getattr(config, name)
            )
    fields, rest = split_generation_kwargs(kwargs)
    for name, value in fields.items():
        setattr(config, name, value)
    config.generation_kwargs = rest or None


def split_generation_kwargs(kwargs: dict | None) -> tuple[dict, dict]:
    """``(fields, rest)``: the ``generation_kwargs`` that name one of the config's sampling fields, as ``{field:
    value}`` (``max_new_tokens``/``max_tokens`` give ``max_completion_length``), and the other keys as they are."""
    kwargs = kwargs or {}
    fields = {GENERATION_KWARGS_FIELDS[k]: v for k, v in kwargs.items() if k in GENERATION_KWARGS_FIELDS}
    return fields, {k: v for k, v in kwargs.items() if k not in GENERATION_KWARGS_FIELDS}


def ignored_grpo_arguments(config: GRPOConfig) -> list[str]:
    """GRPO-only arguments set to a non-default value that ReasonMaxxer does not use."""
    base = {f.name for f in dataclasses.fields(_BaseConfig)}
    defaults = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    ignored = []
    for name, f in defaults.items():
        if name in base or name in HONOURED_GRPO_FIELDS:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(config, name) != default:
            ignored.append(name)
    return ignored


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def _bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
