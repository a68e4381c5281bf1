"""``trl-reasonmaxxer <command>``: every command is a TRL-style script (dataclass flags parsed by ``TrlParser``,
``--config recipe.yaml``, ``--help``); this file only picks it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys


# command → (module of trl_reasonmaxxer exposing make_parser(prog) and main(*dataclasses), one-line help).
# A new command is one line here.
COMMANDS = {
    "train": ("scripts.train", "Train a ReasonMaxxer LoRA (TRL-style script; accelerate launch works)."),
    "eval": ("scripts.eval", "Evaluate a model and its adapters on a math task: pass@k, maj@k, greedy accuracy."),
    "demo": ("scripts.demo", "Base eval, ReasonMaxxer training and adapter eval on the embedded default."),
    "compare": ("scripts.compare", "GRPO (TRL) vs ReasonMaxxer: same model, data, LoRA, reward and evaluation."),
    "analyze": ("scripts.analyze", "Token-level divergence and interventions of a teacher against the base model."),
    "export": (
        "scripts.export",
        "Write an adapter as a llama.cpp GGUF LoRA (and a merged GGUF) for llama.cpp/Ollama.",
    ),
}


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="trl-reasonmaxxer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    command = parser.parse_args(argv[:1]).command
    script = importlib.import_module(f".{COMMANDS[command][0]}", __package__)
    script.main(*script.make_parser(prog=f"{parser.prog} {command}").parse_args_and_config(argv[1:]))


if __name__ == "__main__":
    main()
