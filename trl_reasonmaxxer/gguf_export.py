"""Take a trained adapter home to llama.cpp and Ollama: GGUF files from a PEFT LoRA.

Two products:

- ``peft_to_gguf_lora``: the adapter alone as a llama.cpp GGUF LoRA (a few MB). llama.cpp applies it at run time on
  top of any quantization of the same base model (``llama-cli -m base.gguf --lora lora.gguf``; Ollama's ``ADAPTER``).
- ``merge_to_gguf``: the adapter merged into the base weights, written as a complete GGUF model (f32, f16 or q8_0).

Facts of the formats this module relies on (llama.cpp's adapter loader and LoRA converter, transformers' GGUF loader):

- A GGUF LoRA has ``general.architecture`` = the base's, ``general.type = adapter``, ``adapter.type = lora`` and
  ``adapter.lora.alpha`` (float32). For a base tensor ``blk.{i}.attn_q.weight`` it holds ``….weight.lora_a`` = PEFT's
  ``lora_A.weight`` [r, in] and ``….weight.lora_b`` = ``lora_B.weight`` [out, r], as they are.
- llama.cpp scales each pair by ``alpha / r`` with ``r`` read from that pair's shape, and by 1 when alpha is 0.
- The ``llama`` architecture stores the rows of q and k in a different order than transformers (llama.cpp's rotary
  embedding pairs neighbouring rows; transformers pairs row j with row j + head_dim/2). llama.cpp's converters reorder
  them, for a LoRA the rows of ``lora_b`` (``lora_a`` is untouched), and transformers' GGUF loader undoes it. Qwen2 and
  Qwen3 keep transformers' order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path


logger = logging.getLogger(__name__)

MERGED_DTYPES = ("f16", "q8_0", "f32")
# transformers ``model_type`` -> llama.cpp architecture, for the architectures whose q/k layout is known here.
ARCH_FOR_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
QK_PERMUTED_ARCHS = frozenset({"llama"})
EMBEDDED_ARCH = "qwen2"  # the embedded default model (default_model.DEFAULT_MODEL)
CONVERT_HF_HINT = (
    "llama.cpp's convert_hf_to_gguf.py (merge first: `PeftModel.from_pretrained(base, adapter).merge_and_unload()"
    ".save_pretrained(dir)`, then `python convert_hf_to_gguf.py dir --outtype f16`)"
)
PEFT_PREFIX = "base_model.model."
SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class GGUFExportError(ValueError):
    """The adapter or base model cannot be written in the requested GGUF form; the message says what to change."""


def _lora_targets():
    """The base tensors a llama.cpp LoRA may patch through this exporter: the attention and MLP projections."""
    import gguf

    t = gguf.MODEL_TENSOR
    return {t.ATTN_Q, t.ATTN_K, t.ATTN_V, t.ATTN_OUT, t.FFN_GATE, t.FFN_UP, t.FFN_DOWN}


def gguf_arch(name: str) -> str:
    """llama.cpp's architecture for a transformers ``model_type`` or an architecture name (``mistral`` -> ``llama``).

    Only architectures whose q/k row order is known here are accepted: a wrong guess would load in llama.cpp and
    silently compute something else.
    """
    arch = ARCH_FOR_MODEL_TYPE.get(name, name if name in ARCH_FOR_MODEL_TYPE.values() else None)
    if arch is None:
        raise GGUFExportError(
            f"base architecture {name!r} is not supported by this exporter (supported: "
            f"{', '.join(sorted(ARCH_FOR_MODEL_TYPE))}). Use {CONVERT_HF_HINT}."
        )
    return arch


def tensor_name_map(arch: str, n_blocks: int):
    """The gguf package's own map from transformers parameter names to GGUF tensor names for ``arch``."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(by_name[arch], n_blocks)


def permute_qk_rows(weight, n_head: int):
    """Reorder the rows of a q or k projection (or its LoRA ``lora_b``, or its bias) from transformers' to llama.cpp's order.

    Within each head, transformers' rotary embedding pairs row ``j`` with row ``j + d/2``; llama.cpp's ``llama``
    architecture pairs row ``2j`` with ``2j + 1``. Pass the number of query heads for q and of key/value heads for k.
    Row reordering commutes with the LoRA product (``P(B A) = (P B) A``), so for an adapter only ``lora_b`` moves.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise GGUFExportError(f"cannot split {rows} rows into {n_head} heads of rotary pairs")
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def effective_scale(alpha: float, r: int, use_rslora: bool = False) -> float:
    """PEFT's LoRA scale: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def gguf_alpha(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """The ``adapter.lora.alpha`` that makes llama.cpp's ``alpha / r`` equal PEFT's scale for the config's own ``r``.

    Plain LoRA: ``lora_alpha`` itself. rsLoRA: ``lora_alpha * sqrt(r)``, since ``(alpha * sqrt(r)) / r = alpha / sqrt(r)``.
    """
    return effective_scale(lora_alpha, r, use_rslora) * r


def lora_b_factor(module_scale: float, module_rank: int, alpha: float) -> float:
    """What ``lora_b`` must be multiplied by so that llama.cpp's ``alpha / rank`` gives ``module_scale``.

    1.0 unless ``rank_pattern``/``alpha_pattern`` give this module another scale than the file-wide alpha: the GGUF
    holds a single alpha, so the difference is folded into ``lora_b`` (exact up to float rounding).
    """
    return module_scale * module_rank / alpha


def _module_alpha(module: str, config: dict) -> float:
    """``lora_alpha`` of one module, with ``alpha_pattern`` matched the way PEFT matches it."""
    pattern = config.get("alpha_pattern") or {}
    if not pattern:
        return config["lora_alpha"]
    from peft.utils.other import get_pattern_key

    return pattern.get(get_pattern_key(pattern.keys(), module), config["lora_alpha"])


# ----------------------------------------------------------------------------------------------------------------
# reading the adapter


def load_adapter(adapter_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``adapter_config.json`` as a dict and the adapter's tensors (float32, keys as PEFT saved them)."""
    import torch

    folder = Path(adapter_dir).expanduser()
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise GGUFExportError(f"{folder} has no adapter_config.json: pass the folder a PEFT adapter was saved to.")
    config = json.loads(config_path.read_text())
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "adapter_model.safetensors"))
    elif (folder / "adapter_model.bin").is_file():
        tensors = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise GGUFExportError(f"{folder} has no adapter_model.safetensors (nor adapter_model.bin).")
    return config, {k: v.float() for k, v in tensors.items()}


def _split_key(key: str) -> tuple[str, str]:
    """``(module, role)`` of a saved PEFT tensor: role is ``A``/``B`` for LoRA factors, else what the tensor is."""
    key = key.removeprefix(PEFT_PREFIX)
    for suffix, role in (
        (".lora_A.weight", "A"),
        (".lora_B.weight", "B"),
        (".lora_B.bias", "lora_bias"),
        (".lora_embedding_A", "embedding"),
        (".lora_embedding_B", "embedding"),
        (".lora_magnitude_vector", "dora"),
    ):
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    if ".lora_magnitude_vector." in key:
        return key.split(".lora_magnitude_vector.")[0], "dora"
    return key, "other"


def _variant_settings(config: dict) -> list[str]:
    """PEFT settings that turn LoRA into a variant whose forward pass is not ``W x + s B A x`` (DoRA, aLoRA, …).

    Read from PEFT's own field metadata when it has it (``is_lora_variant``), plus the ones known before it did.
    """
    import dataclasses

    from peft import LoraConfig

    names = {"use_dora", "alora_invocation_tokens", "use_qalora", "arrow_config"}
    init_variants: list = []
    for f in dataclasses.fields(LoraConfig):
        if f.metadata.get("is_lora_variant"):
            names.add(f.name)
        if f.name == "init_lora_weights":
            init_variants = list(f.metadata.get("lora_variants") or [])
    found = [f"{n}={config[n]!r}" for n in sorted(names) if config.get(n)]
    if config.get("init_lora_weights") in init_variants:
        found.append(f"init_lora_weights={config['init_lora_weights']!r}")
    return found


def adapter_problems(config: dict, tensors: dict, name_map) -> list[str]:
    """Every reason the adapter cannot be a llama.cpp LoRA, each naming the setting and what to change (empty: OK)."""
    merged = "or export a merged model instead (`merge_to_gguf`, `trl-reasonmaxxer export --merged`)"
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={config['peft_type']!r}: only LoRA adapters have a llama.cpp form; {merged}.")
    for setting in _variant_settings(config):
        problems.append(f"{setting}: a LoRA variant llama.cpp cannot apply; retrain without it, {merged}.")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save={config['modules_to_save']!r}: full trained copies of modules cannot ride in a LoRA "
            f"GGUF; retrain without modules_to_save, {merged}."
        )
    if config.get("trainable_token_indices"):
        problems.append(f"trainable_token_indices is set: trained embedding rows have no LoRA form; {merged}.")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out=True (Conv1D layers): not a supported layout; use a Linear-layer model.")
    if config.get("layer_replication"):
        problems.append(f"layer_replication is set: the base's layer stack differs from the GGUF's; {merged}.")
    if config.get("target_parameters"):
        problems.append(f"target_parameters is set: only Linear modules can be exported; {merged}.")

    targets = _lora_targets()
    unsupported, unknown_paths, other, lora_biases, base_biases = set(), set(), set(), set(), set()
    for key, value in tensors.items():
        module, role = _split_key(key)
        if role in ("A", "B"):
            hit = name_map.get_type_and_name(module + ".weight", try_suffixes=(".weight",))
            if hit is None and module.rsplit(".", 1)[-1] in SUPPORTED_MODULES:
                unknown_paths.add(module)
            elif hit is None or hit[0] not in targets:
                unsupported.add(module.rsplit(".", 1)[-1])
        elif role == "embedding":
            unsupported.add(module.rsplit(".", 1)[-1])
        elif role == "lora_bias" and bool(value.any()):  # an all-zero lora_B bias is dropped: exact
            lora_biases.add(module.rsplit(".", 1)[-1])
        elif role == "other" and key.endswith(".bias") and config.get("bias", "none") != "none":
            base_biases.add(key)
        elif role == "other" and not config.get("modules_to_save"):
            other.add(key)
    if lora_biases:
        problems.append(
            f"lora_bias=True (trained on {', '.join(sorted(lora_biases))}): llama.cpp LoRAs have no bias; retrain "
            f"with lora_bias=False, {merged}."
        )
    if base_biases:
        problems.append(
            f"bias={config['bias']!r}: trained base biases have no LoRA form; retrain with bias='none', {merged}."
        )
    if unsupported:
        problems.append(
            f"target_modules includes {', '.join(sorted(unsupported))}: llama.cpp LoRA export supports "
            f"{', '.join(SUPPORTED_MODULES)}; retrain with target_modules among those, {merged}."
        )
    if unknown_paths:
        problems.append(
            f"module paths not in the gguf package's tensor map for this architecture (a wrapped or multimodal "
            f"model?): {', '.join(sorted(unknown_paths)[:3])}; export from the plain text model, {merged}."
        )
    if other:
        problems.append(
            f"the adapter holds tensors that are not LoRA factors ({', '.join(sorted(other)[:4])}); {merged}."
        )
    return problems


# ----------------------------------------------------------------------------------------------------------------
# the base model's architecture


def base_model_config(adapter_config: dict) -> dict | None:
    """The base model's ``config.json`` as a dict, from ``base_model_name_or_path`` when it can be found offline."""
    from .default_model import DEFAULT_ALIASES, MODEL_DIRNAME, cache_root

    name = adapter_config.get("base_model_name_or_path")
    if not name:
        return None
    if name in DEFAULT_ALIASES:
        path = cache_root() / MODEL_DIRNAME / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {"model_type": EMBEDDED_ARCH}
    path = Path(name).expanduser() / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    try:  # a hub id: look in the local cache only, never download
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:
        cached = None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def resolve_arch(base_config: dict | None, base_arch: str | None) -> str:
    """The GGUF architecture: the base config's when found, else ``base_arch``; both given must agree."""
    from_config = gguf_arch(base_config["model_type"]) if base_config and base_config.get("model_type") else None
    from_arg = gguf_arch(base_arch) if base_arch else None
    if from_config and from_arg and from_config != from_arg:
        raise GGUFExportError(
            f"base_arch={base_arch!r} but the base model's config.json says {base_config['model_type']!r}: drop "
            "base_arch or point the adapter at the right base."
        )
    if not (from_config or from_arg):
        raise GGUFExportError(
            "the base model's config.json was not found (adapter_config.json's base_model_name_or_path is missing "
            "or not local): pass base_arch='qwen2' or 'llama' (`--base_arch` on the command line)."
        )
    return from_config or from_arg


def _layer_count(keys: Iterable[str], base_config: dict | None) -> int:
    if base_config and base_config.get("num_hidden_layers"):
        return int(base_config["num_hidden_layers"])
    found = [int(m.group(1)) for k in keys if (m := re.search(r"\.layers\.(\d+)\.", k))]
    return max(found, default=0) + 1


# ----------------------------------------------------------------------------------------------------------------
# the adapter as a GGUF LoRA


def _write_atomically(out_path: Path, write) -> None:
    """Run ``write(tmp_path)`` then rename it to ``out_path``: an interrupted export never leaves a truncated file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lora_gguf_tensors(adapter_config: dict, tensors: dict, arch: str, base_config: dict | None = None):
    """``(alpha, [(gguf_name, array), …])`` for a GGUF LoRA; raises ``GGUFExportError`` listing every problem."""
    import numpy as np

    name_map = tensor_name_map(arch, _layer_count(tensors, base_config))
    problems = adapter_problems(adapter_config, tensors, name_map)
    if problems:
        raise GGUFExportError("cannot write this adapter as a llama.cpp LoRA:\n  - " + "\n  - ".join(problems))

    import gguf

    rslora = bool(adapter_config.get("use_rslora"))
    alpha = gguf_alpha(adapter_config["lora_alpha"], adapter_config["r"], rslora)
    if alpha == 0:
        raise GGUFExportError("lora_alpha=0 makes the adapter a no-op, and llama.cpp reads alpha 0 as 'no scaling'.")

    pairs: dict[str, dict] = {}
    for key, value in tensors.items():
        module, role = _split_key(key)
        if role != "lora_bias":  # all zero here (adapter_problems refuses the others)
            pairs.setdefault(module, {})[role] = value
    out = []
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise GGUFExportError(
                f"{module} has {sorted(pair)} but needs both lora_A and lora_B: is the file complete?"
            )
        kind, name = name_map.get_type_and_name(module + ".weight", try_suffixes=(".weight",))
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        factor = lora_b_factor(effective_scale(_module_alpha(module, adapter_config), rank, rslora), rank, alpha)
        if factor != 1.0:
            b = b * factor
        if arch in QK_PERMUTED_ARCHS and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            b = permute_qk_rows(b, _heads(base_config, kind, module))
        out.append((name + ".lora_a", np.ascontiguousarray(a.numpy(), dtype=np.float32)))
        out.append((name + ".lora_b", np.ascontiguousarray(b.numpy(), dtype=np.float32)))
    out.sort(key=lambda item: _tensor_order(item[0]))
    return alpha, out


def _heads(base_config: dict | None, kind, module: str) -> int:
    """Query heads for q, key/value heads for k (needed to reorder their rows for the llama architecture)."""
    import gguf

    if not base_config or "num_attention_heads" not in base_config:
        raise GGUFExportError(
            f"{module}: the llama architecture needs the base's head counts to lay out q/k, and the base model's "
            "config.json was not found: set base_model_name_or_path in adapter_config.json to the base model folder."
        )
    n_head = base_config["num_attention_heads"]
    if kind == gguf.MODEL_TENSOR.ATTN_K:
        return base_config.get("num_key_value_heads") or n_head
    return n_head


def _tensor_order(name: str) -> tuple:
    """Sort key: block number, then name (lora_a before its lora_b, as llama.cpp's own converter writes them)."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def peft_to_gguf_lora(
    adapter_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    base_arch: str | None = None,
    base_config: dict | None = None,
) -> str:
    """Convert a PEFT LoRA folder to a llama.cpp GGUF LoRA at ``out_path``; return the path.

    ``base_arch`` (``qwen2``, ``llama``, …) is used when the base model's ``config.json`` cannot be found from
    ``base_model_name_or_path``; ``base_config`` is that ``config.json`` as a dict when the caller has the base at hand
    (a model in memory: ``model.config.to_dict()``), and then wins over the lookup. The factors are written in float32, unchanged except where llama.cpp needs it:
    rsLoRA is folded into ``adapter.lora.alpha``, per-module ``rank_pattern``/``alpha_pattern`` scales into
    ``lora_b``, and for the llama architecture the q/k rows of ``lora_b`` are put in llama.cpp's order.
    Settings with no llama.cpp form (DoRA, biases, ``modules_to_save``, embedding or ``lm_head`` targets, …) raise
    one ``GGUFExportError`` naming each setting and what to change.
    """
    import gguf

    adapter_config, tensors = load_adapter(adapter_dir)
    base_config = base_config or base_model_config(adapter_config)
    arch = resolve_arch(base_config, base_arch)
    alpha, arrays = lora_gguf_tensors(adapter_config, tensors, arch, base_config)
    out = Path(out_path).expanduser()

    def write(path: str) -> None:
        writer = gguf.GGUFWriter(path, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(Path(adapter_dir).expanduser().resolve().name)
        for name, array in arrays:
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomically(out, write)
    logger.info("wrote %s: %d LoRA pairs, alpha %.4g, %s", out, len(arrays) // 2, alpha, arch)
    return str(out)


# ----------------------------------------------------------------------------------------------------------------
# merged model


def find_base_gguf(model_dir_or_name: str, base_gguf: str | None = None) -> str | None:
    """The GGUF file a base model was born from, or ``None`` when it has none (a plain transformers folder).

    ``base_gguf`` wins; ``"default"`` or the embedded model's folder is its joined GGUF (``default_model.embedded_gguf``,
    joined on first use, seconds); a ``.gguf`` path is itself; another folder holds exactly one ``*.gguf``.
    """
    from .default_model import embedded_gguf

    if base_gguf:
        return str(Path(base_gguf).expanduser())
    embedded = embedded_gguf(model_dir_or_name)
    if embedded is not None:
        return embedded
    path = Path(model_dir_or_name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path)
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return str(found[0]) if len(found) == 1 else None


def resolve_merge_base(model_dir_or_name: str, base_gguf: str | None = None) -> tuple[str, str]:
    """``(float_weights, gguf_file)``: where to load the base's weights from, and the GGUF whose metadata to copy.

    A model that was never a GGUF has no tokenizer metadata to copy: that case is refused, pointing to llama.cpp's
    converter.
    """
    from .default_model import DEFAULT_ALIASES, default_model_path

    gguf_file = find_base_gguf(model_dir_or_name, base_gguf)
    if gguf_file is None:
        raise GGUFExportError(
            f"{model_dir_or_name!r} is not a GGUF-born model, so there is no tokenizer/hparam metadata to copy into "
            f"a merged GGUF. Pass the base's .gguf file (or base_gguf=...), or use {CONVERT_HF_HINT}."
        )
    weights = (
        default_model_path() if model_dir_or_name in DEFAULT_ALIASES else str(Path(model_dir_or_name).expanduser())
    )
    return weights, gguf_file


def lora_base_problems(lora_gguf: str, base_gguf: str) -> list[str]:
    """Why llama.cpp would refuse this LoRA on this base (architecture, missing tensors, shapes); empty: it fits."""
    import gguf

    lora, base = gguf.GGUFReader(lora_gguf), gguf.GGUFReader(base_gguf)
    arch_key = gguf.Keys.General.ARCHITECTURE
    if gguf_field(lora, arch_key) != gguf_field(base, arch_key):
        return [f"architecture {gguf_field(lora, arch_key)!r} vs the base's {gguf_field(base, arch_key)!r}"]
    shapes = {t.name: [int(d) for d in t.shape] for t in base.tensors}  # GGUF order: [in, out]
    problems = []
    for t in lora.tensors:
        name, part = t.name.rsplit(".", 1)
        if name not in shapes:
            problems.append(f"{name} is not in the base")
            continue
        # lora_a is [in, r] and lora_b is [r, out] in GGUF order
        expected = shapes[name][0] if part == "lora_a" else shapes[name][1]
        got = int(t.shape[0]) if part == "lora_a" else int(t.shape[1])
        if got != expected:
            problems.append(f"{t.name} has {got} where the base has {expected}")
    return problems


def load_float_model(model_path: str):
    """The base model in float32 from a folder or a ``.gguf`` file (dequantized, trainable/mergeable)."""
    import torch
    from transformers import AutoModelForCausalLM

    from .default_model import _dense_gguf_options

    path = Path(model_path)
    if path.is_file():
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, **_dense_gguf_options()
        )
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # PEFT treats a model still marked quantized differently
            quantizer.remove_quantization_config(model)
        return model
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _copy_metadata(reader, writer, file_type: int) -> None:
    """Every key of the base GGUF (tokenizer, hparams, chat template), except those the writer owns or we change."""
    import gguf

    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.ALIGNMENT}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        vtype = field.types[0]
        sub_type = None
        if vtype == gguf.GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise GGUFExportError(f"metadata {name!r} is a nested array, which this exporter cannot copy.")
            sub_type = field.types[-1]
            if not field.data:
                logger.warning("skipping empty metadata array %s", name)
                continue
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    if gguf.Keys.General.ALIGNMENT in reader.fields:
        writer.add_custom_alignment(int(reader.fields[gguf.Keys.General.ALIGNMENT].contents()))
    writer.add_file_type(file_type)


def gguf_field(reader, key: str, default=None):
    """One metadata value of a ``gguf.GGUFReader`` as a Python value."""
    field = reader.fields.get(key)
    return field.contents() if field is not None else default


def _encode(array, dtype: str):
    """``(data, ggml_type)`` for one tensor: 1-D tensors (norms, biases) stay float32, as llama.cpp expects."""
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType
    array = np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "f32" or array.ndim == 1:
        return array, q.F32
    if dtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
        if array.shape[-1] % block == 0:
            return gguf.quants.quantize(array, q.Q8_0), q.Q8_0
        logger.info("row length %d is not a multiple of %d: writing this tensor in f16", array.shape[-1], block)
    return array.astype(np.float16), q.F16


def _check_q8_0_available() -> None:
    import gguf
    import numpy as np

    try:
        gguf.quants.quantize(np.zeros((1, 32), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    except (NotImplementedError, AttributeError) as err:
        raise GGUFExportError(
            f"this gguf package ({getattr(gguf, '__version__', '?')}) cannot write q8_0: export f16 and run "
            "llama.cpp's `llama-quantize merged-f16.gguf merged-q8_0.gguf Q8_0`."
        ) from err


def merged_gguf_tensors(state_dict: dict, reader, dtype: str) -> list[tuple[str, object, object]]:
    """``[(gguf_name, data, ggml_type), …]`` in the base GGUF's tensor order, from a merged transformers state dict.

    Every tensor of the base GGUF must be produced, with the base's shape; transformers tensors with no GGUF
    counterpart are only allowed for a tied ``lm_head`` (the GGUF then has no ``output.weight``).
    """
    import gguf
    import torch

    arch = gguf_field(reader, gguf.Keys.General.ARCHITECTURE)
    gguf_arch(arch)  # refuse architectures whose q/k layout is unknown here
    n_blocks = int(gguf_field(reader, f"{arch}.block_count"))
    n_head = int(gguf_field(reader, f"{arch}.attention.head_count"))
    n_kv = int(gguf_field(reader, f"{arch}.attention.head_count_kv", n_head))
    name_map = tensor_name_map(arch, n_blocks)
    wanted = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}

    produced, unmatched = {}, []
    for hf_name, tensor in state_dict.items():
        hit = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if hit is None or hit[1] not in wanted:
            unmatched.append(hf_name)
            continue
        kind, name = hit
        if arch in QK_PERMUTED_ARCHS and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            tensor = permute_qk_rows(tensor, n_head if kind == gguf.MODEL_TENSOR.ATTN_Q else n_kv)
        produced[name] = tensor.detach().float().cpu()
    embedding = next((v for k, v in state_dict.items() if k.endswith("embed_tokens.weight")), None)
    tied = []
    if "lm_head.weight" in unmatched and "output.weight" not in wanted and embedding is not None:
        tied = ["lm_head.weight"]
        head = state_dict["lm_head.weight"]
        if not torch.equal(head, embedding):
            # a trained lm_head (modules_to_save) on a tied base: add an untied output.weight, which llama.cpp
            # (qwen2, qwen3, llama) prefers over token_embd and transformers loads as tie_word_embeddings=False
            wanted = {**wanted, "output.weight": tuple(head.shape)}
            produced["output.weight"] = head.detach().float().cpu()
    unmatched = [n for n in unmatched if n not in tied]
    missing = [n for n in wanted if n not in produced]
    wrong = [
        f"{n} {tuple(produced[n].shape)} vs {wanted[n]}" for n in produced if tuple(produced[n].shape) != wanted[n]
    ]
    if unmatched or missing or wrong:
        raise GGUFExportError(
            "the merged model does not match the base GGUF (is the GGUF the same model?): "
            + "; ".join(
                part
                for part in (
                    f"no GGUF tensor for {', '.join(unmatched[:5])}" if unmatched else "",
                    f"GGUF tensors not produced: {', '.join(missing[:5])}" if missing else "",
                    f"shape mismatch: {', '.join(wrong[:5])}" if wrong else "",
                )
                if part
            )
        )
    return [(name, *_encode(produced[name].numpy(), dtype)) for name in wanted]


def merge_to_gguf(
    model_dir_or_name: str,
    adapter_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    dtype: str = "f16",
    base_gguf: str | None = None,
) -> str:
    """Merge the adapter into the base (PEFT ``merge_and_unload``) and write a complete GGUF model; return the path.

    The base must be GGUF-born (``"default"``, a ``.gguf`` file, or a folder with ``base_gguf``): its metadata
    (tokenizer, hyperparameters, chat template) is copied unchanged and its tensors are replaced by the merged float
    weights, in ``dtype`` (``f16``, ``q8_0`` or ``f32``; norms and biases stay float32). The file loads in llama.cpp
    and with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``.
    """
    import gguf
    import torch
    from peft import PeftModel

    if dtype not in MERGED_DTYPES:
        raise GGUFExportError(f"dtype={dtype!r}: choose one of {', '.join(MERGED_DTYPES)}.")
    if dtype == "q8_0":
        _check_q8_0_available()
    weights, gguf_path = resolve_merge_base(model_dir_or_name, base_gguf)
    reader = gguf.GGUFReader(gguf_path)
    arch = gguf_field(reader, gguf.Keys.General.ARCHITECTURE)
    gguf_arch(arch)
    model = load_float_model(weights)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        tensors = merged_gguf_tensors(merged.state_dict(), reader, dtype)
    del model, merged
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    out = Path(out_path).expanduser()

    def write(path: str) -> None:
        writer = gguf.GGUFWriter(path, arch)
        _copy_metadata(reader, writer, int(file_type))
        for name, data, qtype in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomically(out, write)
    logger.info("wrote %s: %d tensors, %s, base %s", out, len(tensors), dtype, gguf_path)
    return str(out)
