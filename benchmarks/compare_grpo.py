"""GRPO (TRL's GRPOTrainer) vs ReasonMaxxer on the same model, data, LoRA, reward and evaluation, with a cost ledger.

The same command as ``trl-reasonmaxxer compare``; see ``--help`` and docs/benchmarks.md.

    HF_HUB_OFFLINE=1 python benchmarks/compare_grpo.py --quick
    HF_HUB_OFFLINE=1 python benchmarks/compare_grpo.py --seeds 0 1 --gate_ablation
    HF_HUB_OFFLINE=1 python benchmarks/compare_grpo.py --config examples/recipes/compare.yaml
"""

import sys

from trl_reasonmaxxer.cli import main


if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
