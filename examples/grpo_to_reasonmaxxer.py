"""A GRPOTrainer script turned into a ReasonMaxxer script by changing two names (marked `# was:`).

    python examples/grpo_to_reasonmaxxer.py                        # the embedded default model on SVAMP
    python examples/grpo_to_reasonmaxxer.py --model path/to/model --num-problems 200

Everything else is the GRPO script as written: GRPOConfig's arguments, the `prompt` dataset column, extra columns
(`solution`) reaching the reward function, `trainer.train()` and `trainer.save_model()`. Arguments with a
ReasonMaxxer meaning (num_generations, temperature, max_completion_length, beta) are honoured; GRPO-only ones set
away from their defaults (scale_rewards="batch" here) are reported once as having no effect, and GRPO loss names
(loss_type="dapo") fall back to ReasonMaxxer's loss.
"""

import argparse

from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer  # was: from trl import GRPOConfig, GRPOTrainer
from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.rewards import math_accuracy_reward
from trl_reasonmaxxer.tasks import load_task


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local model folder.")
parser.add_argument("--num-problems", type=int, default=100)
parser.add_argument("--output-dir", default="runs/grpo-to-reasonmaxxer")
cli = parser.parse_args()

dataset = load_task("svamp", "train", num_problems=cli.num_problems)  # columns: prompt (chat), solution, ...

training_args = ReasonMaxxerConfig(  # was: GRPOConfig(
    output_dir=cli.output_dir,
    num_generations=8,
    max_completion_length=256,
    temperature=0.7,
    beta=0.04,
    loss_type="dapo",
    scale_rewards="batch",
    logging_steps=5,
    report_to="none",
)
trainer = ReasonMaxxerTrainer(  # was: GRPOTrainer(
    model=resolve_model(cli.model),
    reward_funcs=[math_accuracy_reward],
    args=training_args,
    train_dataset=dataset,
)
trainer.train()
trainer.save_model(training_args.output_dir)
