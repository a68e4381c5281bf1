"""ReasonMaxxer for TRL: offline, entropy-gated contrastive LoRA training in place of RL for LLM reasoning."""

__version__ = "0.1.0"

from .collator import DataCollatorForForkPairs, build_pairs
from .config import ReasonMaxxerConfig
from .trainer import ReasonMaxxerTrainer


__all__ = ["DataCollatorForForkPairs", "ReasonMaxxerConfig", "ReasonMaxxerTrainer", "build_pairs"]
