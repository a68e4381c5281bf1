"""The training script, in TRL's style: ``trl-reasonmaxxer train`` and ``examples/reasonmaxxer.py`` run this code.

```bash
trl-reasonmaxxer train --config examples/recipes/svamp.yaml            # one CPU or GPU
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/reasonmaxxer.py \\
    --config examples/recipes/svamp.yaml --dtype bfloat16                # N GPUs (DDP)
```

Arguments come from three dataclasses, as in TRL's scripts: [`ReasonMaxxerScriptArguments`] (data, rewards),
[`ReasonMaxxerConfig`] (every GRPOConfig/TrainingArguments option plus ReasonMaxxer's) and `trl.ModelConfig`
(model, dtype, `--use_peft`/`--lora_*`, `--load_in_4bit`). A `--config recipe.yaml` gives defaults; flags win;
`--quick` shrinks the run to a smoke test (:mod:`.parser`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from ..config import ReasonMaxxerConfig
from ..default_model import resolve_model
from ..tasks import TASKS, load_prompts
from ..trainer import ReasonMaxxerTrainer
from .parser import QuickArguments, ScriptParser


logger = logging.getLogger(__name__)


@dataclass
class ReasonMaxxerScriptArguments(ScriptArguments, QuickArguments):
    """
    Script arguments of the ReasonMaxxer training script (besides TRL's `ScriptArguments`).

    Args:
        dataset_name (`str`, *optional*, defaults to `"svamp"`):
            A packaged task (`svamp`, `gsm8k`, `math`, `math500`, `mawps`), a folder saved with
            `Dataset.save_to_disk` (a `DatasetDict` uses `dataset_train_split`), or a `.json`/`.jsonl`/`.parquet`/
            `.csv` file. Nothing is downloaded. It needs a `prompt` column and the columns the rewards read.
        num_problems (`int`, *optional*):
            Use this many training problems: a seeded subset of a packaged task, the first rows of a local one.
        reward_funcs (`list[str]`, *optional*, defaults to `["math_accuracy_reward"]`):
            Names of functions in `trl_reasonmaxxer.rewards` or `trl.rewards`, or dotted paths `my_lib.my_reward`.
        quick (`bool`, *optional*, defaults to `False`):
            A smoke run in minutes (8 problems, 4 rollouts of 64 tokens, 2 steps): checks the setup, measures nothing.
    """

    QUICK = dict(num_problems=8, num_generations=4, max_completion_length=64, max_problems=4, max_steps=2)

    dataset_name: str | None = field(
        default="svamp", metadata={"help": "Packaged task name, local dataset folder, or json/jsonl/parquet/csv file."}
    )
    num_problems: int | None = field(default=None, metadata={"help": "Number of training problems to use."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_accuracy_reward"],
        metadata={"help": "Reward functions: names in trl_reasonmaxxer.rewards / trl.rewards, or dotted paths."},
    )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser(
        (ReasonMaxxerScriptArguments, ReasonMaxxerConfig, ModelConfig),
        prog=prog,
        description="Train a ReasonMaxxer LoRA. `--config recipe.yaml` sets defaults for any flag below (flags win); "
        "launch with `accelerate launch --config_file examples/accelerate_configs/<name>.yaml` for several GPUs.",
    )


def ignored_arguments(script_args, training_args, model_args) -> list[str]:
    """Messages for the arguments that were set but have no effect in this script."""
    messages = []
    if not model_args.use_peft:
        defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
        changed = [
            n
            for n in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora")
            if getattr(model_args, n) != defaults[n]
        ]
        if changed:
            messages.append(
                f"{', '.join(changed)} ha{'ve' if len(changed) > 1 else 's'} no effect without --use_peft: the "
                "paper's LoRA (r=32, alpha=64, dropout 0 on q/k/v/o) is used. Add --use_peft to use your LoRA settings."
            )
    if script_args.dataset_name in TASKS and script_args.dataset_config is not None:
        messages.append(f"dataset_config has no effect: {script_args.dataset_name!r} is a packaged task.")
    if training_args.eval_strategy != "no":
        messages.append(
            f"eval_strategy={training_args.eval_strategy.value!r} has no effect: ReasonMaxxer does not evaluate "
            f"during training. Evaluate the adapter with `trl-reasonmaxxer eval --adapter {training_args.output_dir}`."
        )
    return messages


def main(script_args, training_args, model_args) -> ReasonMaxxerTrainer:
    """Offline phase, training, then the adapter saved to ``output_dir`` (and pushed with ``--push_to_hub``)."""
    if script_args.dataset_streaming:
        raise ValueError(
            "dataset_streaming is not supported: the offline phase samples every prompt once, so it needs a "
            "map-style dataset. Drop --dataset_streaming (use --num_problems to take a subset)."
        )
    for message in ignored_arguments(script_args, training_args, model_args):
        logger.warning(message)
    dataset = load_prompts(
        script_args.dataset_name, script_args.dataset_train_split, script_args.num_problems, training_args.seed
    )
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    trainer = ReasonMaxxerTrainer(
        model=resolve_model(model_args.model_name_or_path or "default"),
        reward_funcs=script_args.reward_funcs,
        args=training_args,
        train_dataset=dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args.resume_from_checkpoint))
    if training_args.push_to_hub:
        # no dataset_name: the card would link it as a Hub dataset id, which packaged tasks and local paths are not
        trainer.push_to_hub()  # saves to output_dir first
        trainer.accelerator.print(f"Adapter saved to {training_args.output_dir} and pushed to {trainer.hub_model_id}.")
    else:
        trainer.save_model(training_args.output_dir)
        # PEFT's save_pretrained leaves its generic README: replace it with the ReasonMaxxer card
        trainer.create_model_card(model_name=Path(training_args.output_dir).name)
        trainer.accelerator.print(f"Adapter and model card saved to {training_args.output_dir}.")
    trainer.end()  # finish trackers and the process group
    return trainer


def checkpoint_to_resume(value: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint true`` (or ``last``) means the latest checkpoint in ``output_dir``."""
    if isinstance(value, str) and value.lower() in ("true", "last", "latest"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    return value


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
