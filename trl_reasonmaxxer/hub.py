"""What a trained adapter carries to the Hub: the ReasonMaxxer part of its model card, and how a failed push is
reported. Pure functions of the config, the pool's statistics and the base model's precision."""

from __future__ import annotations

import shlex


# `output_dir` holds more than the adapter: checkpoints and `_*` are skipped as Trainer does, and so is the
# offline phase's cache (`rollout_cache_dir`, possibly gigabytes of rollouts): keep it local or publish it as a
# dataset on its own.
HUB_IGNORE_PATTERNS = ["_*", "checkpoint-*", "rollouts/*"]


class HubPushError(RuntimeError):
    """Uploading to the Hub failed; everything is saved locally (the message says where and how to retry)."""


def describe_precision(quantization: dict | None, weight_dtype: str, head_dtype: str, mixed_precision: str) -> str:
    """One sentence on the numerics of the frozen base: rollouts, entropy scoring and the KL reference all run on it.

    ``quantization`` is the base model's ``config.quantization_config`` as a dict (None when not quantized).
    """
    if not quantization:
        weights = f"{weight_dtype} weights"
    elif quantization.get("load_in_4bit"):
        kind = quantization.get("bnb_4bit_quant_type", "fp4")
        nested = ", double quantization" if quantization.get("bnb_4bit_use_double_quant") else ""
        compute = str(quantization.get("bnb_4bit_compute_dtype", "float32")).removeprefix("torch.")
        weights = f"4-bit {kind.upper()} weights (bitsandbytes QLoRA{nested}; compute dtype {compute})"
    elif quantization.get("load_in_8bit"):
        weights = "8-bit LLM.int8 weights (bitsandbytes)"
    else:
        weights = f"{quantization.get('quant_method', 'quantized')} weights"
    return (
        f"Base model: {weights}, {head_dtype} LM head; training mixed precision: {mixed_precision}. Rollouts, "
        "entropy scoring and the KL reference use these base weights with the adapter disabled."
    )


def card_settings(args, lora: dict | None) -> dict[str, dict[str, object]]:
    """The settings that define a ReasonMaxxer run, grouped as in ``ReasonMaxxerConfig``'s docstring."""
    gate = {"fork_gate": args.fork_gate, "fork_scope": args.fork_scope}
    if args.fork_gate != "all":  # the random control draws as many positions as the entropy gate would
        if args.fork_scope == "rollout" and args.fork_topk is not None:
            gate["fork_topk"] = args.fork_topk
        elif args.fork_threshold is not None:
            gate["fork_threshold"] = args.fork_threshold
        else:
            gate["fork_fraction"] = args.fork_fraction
    loss = {"loss_type": args.loss_type, "beta": args.beta, "kl_on_prompt": args.kl_on_prompt}
    if args.loss_type == "adv_ratio":
        loss["epsilon"] = args.epsilon
    if args.loss_type == "fork_dpo":
        loss["dpo_beta"] = args.dpo_beta
    if args.loss_type == "adv_ce" and args.neg_prob_floor is not None:
        loss["neg_prob_floor"] = args.neg_prob_floor
    settings = {
        "Rollouts": {
            "num_generations": args.num_generations,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "max_completion_length": args.max_completion_length,
        },
        "Selection": {"max_problems": args.max_problems, "advantage_clip": args.advantage_clip},
        "Fork gate": gate,
        "Loss": loss,
        "Optimisation": {
            "learning_rate": args.learning_rate,
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "seed": args.seed,
        },
    }
    if lora:
        targets = lora.get("target_modules")
        settings["LoRA"] = {
            "r": lora.get("r"),
            "lora_alpha": lora.get("lora_alpha"),
            "lora_dropout": lora.get("lora_dropout"),
            "target_modules": ", ".join(sorted(targets)) if isinstance(targets, (list, set, tuple)) else targets,
        }
    return settings


def card_section(settings: dict[str, dict[str, object]], pool_stats: dict[str, float], precision: str) -> str:
    """The model card's ReasonMaxxer section (markdown)."""
    lines = [
        "## ReasonMaxxer training",
        "",
        "Offline, entropy-gated training instead of online RL: rollouts sampled once from the frozen base model, the "
        "prompts it sometimes solves kept, and a LoRA trained with an advantage-weighted loss only at high-entropy "
        '"fork" tokens plus a KL anchor to the base model elsewhere.',
        "",
        precision,
        "",
        "| group | setting | value |",
        "|---|---|---|",
    ]
    for group, values in settings.items():
        lines += [f"| {group} | `{name}` | {_fmt(value)} |" for name, value in values.items()]
    if pool_stats:
        lines += ["", "### Offline pool", "", "| statistic | value |", "|---|---|"]
        lines += [f"| `{name}` | {_fmt(value)} |" for name, value in pool_stats.items()]
    return "\n".join(lines) + "\n"


def insert_section(card: str, section: str) -> str:
    """``card`` with ``section`` inserted before its framework versions (or at the end)."""
    anchor = card.find("### Framework versions")
    if anchor < 0:
        return card.rstrip("\n") + "\n\n" + section
    return card[:anchor] + section + "\n" + card[anchor:]


def push_failed_message(err: BaseException, repo_id: str, output_dir: str) -> str:
    excludes = " ".join(f"--exclude {shlex.quote(p)}" for p in HUB_IGNORE_PATTERNS)
    return (
        f"Pushing to the Hub repo {repo_id!r} failed ({type(err).__name__}: {err}). Nothing is lost: the adapter, "
        f"tokenizer files and model card are saved in {output_dir}. Retry when the Hub is reachable (and `hf auth "
        f"login` has a write token) with:\n  hf upload {shlex.quote(repo_id)} {shlex.quote(output_dir)} . {excludes}\n"
        "or call trainer.push_to_hub() again."
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
