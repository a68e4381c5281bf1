"""``trl-reasonmaxxer export``: a trained adapter as GGUF files for llama.cpp and Ollama (docs/export.md).

Writes ``lora.gguf`` (the adapter, applied at run time on top of the base GGUF) and, with ``--merged``, a complete
``merged-<dtype>.gguf``; prints the Ollama Modelfile lines and the llama.cpp command. ``--config export.yaml`` sets
any flag (flags win), as in ``trl-reasonmaxxer train``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..gguf_export import (
    MERGED_DTYPES,
    GGUFExportError,
    find_base_gguf,
    gguf_field,
    lora_base_problems,
    merge_to_gguf,
    peft_to_gguf_lora,
)
from .parser import ScriptParser


logger = logging.getLogger(__name__)


@dataclass
class ExportArguments:
    adapter: str = field(metadata={"help": "Folder of the trained PEFT adapter (adapter_config.json + weights)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where to write the GGUF files; default: <adapter>/gguf."}
    )
    model_name_or_path: str = field(
        default="default",
        metadata={
            "help": "The base the adapter was trained on: 'default' (the embedded Qwen2.5-Coder-0.5B-Instruct, whose "
            "Q4 GGUF is the llama.cpp base), a .gguf file, or a folder holding one .gguf."
        },
    )
    merged: bool = field(
        default=False, metadata={"help": "Also write the adapter merged into the base as one complete GGUF model."}
    )
    merged_dtype: str = field(
        default="f16",
        metadata={
            "help": "Weight type of the merged GGUF (norms and biases stay f32).",
            "choices": list(MERGED_DTYPES),
        },
    )
    base_arch: str | None = field(
        default=None,
        metadata={"help": "llama.cpp architecture (qwen2, llama) when the base's config.json cannot be found."},
    )
    base_gguf: str | None = field(
        default=None, metadata={"help": "The base's GGUF file, when --model_name_or_path is a folder without one."}
    )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser(
        (ExportArguments,),
        prog=prog,
        description="Export a ReasonMaxxer adapter for llama.cpp / Ollama as a GGUF LoRA (and optionally a merged "
        "GGUF model). `--config export.yaml` sets defaults for any flag below (flags win).",
    )


def _base_gguf(args: ExportArguments) -> str | None:
    """The base GGUF for the printed commands, or ``None`` (never converts the embedded model to float32)."""
    from ..default_model import MissingModelPartsError

    try:
        return find_base_gguf(args.model_name_or_path, args.base_gguf)
    except MissingModelPartsError as err:
        logger.warning("the embedded model's GGUF is not available: %s", err)
        return None


def modelfile_lines(base: str, lora: str | None = None) -> list[str]:
    """The Ollama Modelfile: ``FROM`` the base GGUF, plus ``ADAPTER`` the GGUF LoRA when there is one."""
    return [f"FROM {base}"] + ([f"ADAPTER {lora}"] if lora else [])


def main(args: ExportArguments) -> dict[str, str]:
    """Write the GGUF files, an Ollama ``Modelfile``, print how to run them; return the written paths."""
    out_dir = Path(args.output_dir or Path(args.adapter) / "gguf").expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base_gguf(args)
    base_arch = args.base_arch
    if base and not base_arch:
        import gguf

        base_arch = gguf_field(gguf.GGUFReader(base), gguf.Keys.General.ARCHITECTURE)
    paths: dict[str, str] = {}
    try:
        paths["lora"] = peft_to_gguf_lora(args.adapter, out_dir / "lora.gguf", base_arch=base_arch)
    except GGUFExportError as err:
        if not args.merged:
            raise
        print(f"No GGUF LoRA: {err}\nWriting the merged model only.", file=sys.stderr)
    if base and "lora" in paths:
        problems = lora_base_problems(paths["lora"], base)
        if problems:
            raise GGUFExportError(f"{paths['lora']} does not fit the base {base}: " + "; ".join(problems[:5]))
    if args.merged:
        paths["merged"] = merge_to_gguf(
            args.model_name_or_path,
            args.adapter,
            out_dir / f"merged-{args.merged_dtype}.gguf",
            args.merged_dtype,
            args.base_gguf,
        )
    if base:
        paths["base_gguf"] = base

    shown_base = base or "<base.gguf: convert the base with llama.cpp's convert_hf_to_gguf.py>"
    lines = []
    if "lora" in paths:
        modelfile = modelfile_lines(shown_base, paths["lora"])
        if base:
            paths["modelfile"] = str(out_dir / "Modelfile")
            Path(paths["modelfile"]).write_text("\n".join(modelfile) + "\n")
        lines += [
            f"GGUF LoRA: {paths['lora']} ({Path(paths['lora']).stat().st_size / 1e6:.1f} MB)",
            "Ollama Modelfile (`ollama create NAME -f Modelfile`):",
            *(f"  {line}" for line in modelfile),
            "llama.cpp:",
            f"  llama-cli -m {shown_base} --lora {paths['lora']}",
        ]
    if "merged" in paths:
        merged = paths["merged"]
        lines += [
            f"Merged GGUF: {merged} ({Path(merged).stat().st_size / 1e6:.1f} MB)",
            "Ollama Modelfile:",
            *(f"  {line}" for line in modelfile_lines(merged)),
            "llama.cpp:",
            f"  llama-cli -m {merged}",
        ]
    print("\n".join(lines), flush=True)
    return paths


if __name__ == "__main__":
    (export_args,) = make_parser().parse_args_and_config()
    main(export_args)
