# /// script
# dependencies = [
#     "trl-reasonmaxxer",
# ]
# ///
"""ReasonMaxxer training script in TRL's style (the same code as `trl-reasonmaxxer train`).

One CPU or GPU:
    python examples/reasonmaxxer.py --config examples/recipes/svamp.yaml
    python examples/reasonmaxxer.py --config examples/recipes/svamp.yaml --quick          # smoke run, minutes

8 GPUs (DDP; see docs/scaling.md for FSDP, DeepSpeed, QLoRA, the Hub and resuming):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/reasonmaxxer.py \
        --config examples/recipes/svamp.yaml --dtype bfloat16

Any option of ReasonMaxxerConfig (and GRPOConfig/TrainingArguments), trl.ModelConfig and
ReasonMaxxerScriptArguments is a flag: `python examples/reasonmaxxer.py --help`.
"""

from trl_reasonmaxxer.scripts.train import main, make_parser


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
