"""GGUF export of PEFT LoRAs (llama.cpp / Ollama): tiny models, offline, seconds."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch


gguf = pytest.importorskip("gguf")

from trl_reasonmaxxer.gguf_export import (  # noqa: E402
    GGUFExportError,
    gguf_field,
    lora_base_problems,
    merge_to_gguf,
    peft_to_gguf_lora,
    tensor_name_map,
)
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer, save_tiny_gguf  # noqa: E402


HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None  # the engine's dependency (the cpu extra)
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
PROMPT = [[9, 4, 10, 8, 10, 12, 6, 5, 4, 7]]  # "what is 1 plus 1 ? the answer is 2" in the tiny vocabulary


# ----------------------------------------------------------------------------------------------------------------
# fixtures: tiny llama and qwen2 bases (hidden 32, so q8_0 blocks of 32 fit), their GGUF files, tiny adapters


def make_base(arch: str, seed: int = 0):
    """A tiny random model of ``arch`` over the tiny tokenizer, with weights large enough to give peaked logits."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=32, seed=seed, arch=arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
            elif "bias" in name:
                p.normal_(0, 0.1)
    return model.eval(), tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def base(request, tmp_path_factory):
    """``(arch, folder, gguf_path)`` of a tiny base saved both as a transformers folder and as a GGUF."""
    arch = request.param
    folder = tmp_path_factory.mktemp(f"base-{arch}")
    model, tokenizer = make_base(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return arch, folder, save_tiny_gguf(model, tokenizer, folder / f"tiny-{arch}-f32.gguf")


def make_adapter(base_folder: Path, out: Path, targets=ATTN, seed: int = 1, **lora_kwargs) -> Path:
    """A random LoRA on the tiny base (``lora_B`` non-zero, so it changes the model) saved with ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name or "lora_embedding" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(str(out))
    return out


def peft_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def read_gguf(path) -> tuple[object, dict]:
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def gguf_array(t) -> np.ndarray:
    """A GGUF tensor as float32 in transformers' orientation (GGUF lists dimensions innermost first)."""
    return np.asarray(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])


def logits_of(model, ids=PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits[0].float()


def gguf_name(arch: str, module: str, layer: int) -> str:
    return tensor_name_map(arch, 2).get_name(f"model.layers.{layer}.{module}.weight", try_suffixes=(".weight",))


def module_path(module: str) -> str:
    return f"self_attn.{module}" if module in ATTN else f"mlp.{module}"


# ----------------------------------------------------------------------------------------------------------------
# GGUF LoRA


def test_lora_round_trip(base, tmp_path):
    """Names, shapes, dtype, alpha, type/architecture, and values equal to PEFT's (q/k rows reordered for llama)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    arch, folder, _ = base
    adapter = make_adapter(folder, tmp_path / "adapter", targets=ATTN + MLP)
    out = peft_to_gguf_lora(adapter, tmp_path / "lora.gguf")
    reader, tensors = read_gguf(out)
    assert gguf_field(reader, "general.architecture") == arch
    assert gguf_field(reader, "general.type") == "adapter"
    assert gguf_field(reader, "adapter.type") == "lora"
    assert reader.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
    assert gguf_field(reader, "adapter.lora.alpha") == 8.0

    saved = peft_tensors(adapter)
    expected = set()
    unpermute = LlamaTensorProcessor()._reverse_permute_weights  # transformers' own inverse of llama's q/k order
    for layer in range(2):
        for module in ATTN + MLP:
            name = gguf_name(arch, module_path(module), layer)
            expected |= {name + ".lora_a", name + ".lora_b"}
            key = f"base_model.model.model.layers.{layer}.{module_path(module)}"
            a, b = saved[f"{key}.lora_A.weight"].numpy(), saved[f"{key}.lora_B.weight"].numpy()
            ta, tb = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
            assert ta.tensor_type == tb.tensor_type == gguf.GGMLQuantizationType.F32
            assert [int(d) for d in ta.shape] == [a.shape[1], a.shape[0]]  # GGUF order: [in, r]
            assert [int(d) for d in tb.shape] == [b.shape[1], b.shape[0]]  # [r, out]
            np.testing.assert_array_equal(gguf_array(ta), a)
            got_b = gguf_array(tb)
            if arch == "llama" and module in ("q_proj", "k_proj"):
                assert not np.array_equal(got_b, b)
                np.testing.assert_array_equal(unpermute(got_b, 4, 4 if module == "q_proj" else 2), b)
            else:
                np.testing.assert_array_equal(got_b, b)
    assert set(tensors) == expected


def test_rslora_alpha_is_folded(base, tmp_path):
    """rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r: the file's alpha is lora_alpha * sqrt(r)."""
    arch, folder, _ = base
    adapter = make_adapter(folder, tmp_path / "adapter", use_rslora=True)
    reader, tensors = read_gguf(peft_to_gguf_lora(adapter, tmp_path / "lora.gguf"))
    alpha = gguf_field(reader, "adapter.lora.alpha")
    assert alpha == pytest.approx(8 * math.sqrt(4))
    assert alpha / 4 == pytest.approx(8 / math.sqrt(4))
    saved = peft_tensors(adapter)
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    np.testing.assert_array_equal(gguf_array(tensors[gguf_name(arch, "self_attn.v_proj", 0) + ".lora_b"]), saved[key])


def test_rank_and_alpha_patterns_fold_into_lora_b(base, tmp_path):
    """Per-module rank/alpha: llama.cpp's alpha/r_module times lora_b equals PEFT's scale times lora_B."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    arch, folder, _ = base
    adapter = make_adapter(folder, tmp_path / "adapter", rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 2})
    reader, tensors = read_gguf(peft_to_gguf_lora(adapter, tmp_path / "lora.gguf"))
    alpha = gguf_field(reader, "adapter.lora.alpha")
    saved = peft_tensors(adapter)
    for module, rank, module_alpha in (("q_proj", 2, 8), ("v_proj", 4, 2), ("o_proj", 4, 8)):
        name = gguf_name(arch, f"self_attn.{module}", 1) + ".lora_b"
        b = saved[f"base_model.model.model.layers.1.self_attn.{module}.lora_B.weight"].numpy()
        got = gguf_array(tensors[name])
        assert got.shape == (b.shape[0], rank)
        if arch == "llama" and module == "q_proj":  # back to transformers' row order (checked in the round trip)
            got = LlamaTensorProcessor()._reverse_permute_weights(got, 4, 4)
        np.testing.assert_allclose(alpha / rank * got, module_alpha / rank * b, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, targets, setting",
    [
        ({"use_dora": True}, ATTN, "use_dora=True"),
        ({"modules_to_save": ["lm_head"]}, ATTN, "modules_to_save"),
        ({}, ATTN + ["embed_tokens"], "target_modules includes embed_tokens"),
        ({"bias": "lora_only"}, ATTN, "bias='lora_only'"),
        ({"lora_bias": True}, ATTN, "lora_bias=True"),
    ],
)
def test_unsupported_settings_raise_one_clear_error(kwargs, targets, setting, tmp_path):
    model, _ = make_base("qwen2")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter", targets=targets, **kwargs)
    with pytest.raises(GGUFExportError, match="cannot write this adapter as a llama.cpp LoRA") as info:
        peft_to_gguf_lora(adapter, tmp_path / "lora.gguf")
    message = str(info.value)
    assert setting in message
    assert "merged" in message  # says what to do instead
    assert not (tmp_path / "lora.gguf").exists()


def test_untrained_lora_bias_is_dropped(tmp_path):
    """lora_bias=True whose biases stayed zero exports exactly (PEFT saves them even for bias-free layers)."""
    model, _ = make_base("llama")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter", lora_bias=True)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.bias") for k in tensors)
    save_file(
        {k: (v * 0 if k.endswith("lora_B.bias") else v) for k, v in tensors.items()},
        adapter / "adapter_model.safetensors",
    )
    _, written = read_gguf(peft_to_gguf_lora(adapter, tmp_path / "lora.gguf"))
    assert len(written) == 2 * 2 * len(ATTN)


def test_several_problems_are_listed_in_one_error(tmp_path):
    model, _ = make_base("qwen2")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter", use_dora=True, modules_to_save=["lm_head"])
    with pytest.raises(GGUFExportError) as info:
        peft_to_gguf_lora(adapter, tmp_path / "lora.gguf")
    assert "use_dora=True" in str(info.value) and "modules_to_save" in str(info.value)


def test_base_arch_argument(tmp_path):
    """Without a findable base config the architecture comes from base_arch; a contradicting base_arch is refused."""
    import json

    model, _ = make_base("qwen2")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter")
    with pytest.raises(GGUFExportError, match="base_arch"):
        peft_to_gguf_lora(adapter, tmp_path / "x.gguf", base_arch="llama")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    config_path.write_text(json.dumps(config))
    with pytest.raises(GGUFExportError, match="base_arch="):
        peft_to_gguf_lora(adapter, tmp_path / "x.gguf")
    reader, _ = read_gguf(peft_to_gguf_lora(adapter, tmp_path / "x.gguf", base_arch="qwen2"))
    assert gguf_field(reader, "general.architecture") == "qwen2"
    with pytest.raises(GGUFExportError, match="not supported"):
        peft_to_gguf_lora(adapter, tmp_path / "x.gguf", base_arch="gpt2")


def test_lora_fits_base_check(base, tmp_path):
    arch, folder, base_gguf = base
    lora = peft_to_gguf_lora(make_adapter(folder, tmp_path / "adapter"), tmp_path / "lora.gguf")
    assert lora_base_problems(lora, str(base_gguf)) == []
    other_arch = "qwen2" if arch == "llama" else "llama"
    model, tokenizer = make_base(other_arch)
    other = save_tiny_gguf(model, tokenizer, tmp_path / "other.gguf")
    assert "architecture" in lora_base_problems(lora, str(other))[0]


# ----------------------------------------------------------------------------------------------------------------
# merged GGUF


def test_tiny_gguf_fixture_loads_back_exactly(base):
    """The fixture's q/k layout agrees with transformers' GGUF loader (which reverses llama's permutation)."""
    from transformers import AutoModelForCausalLM

    arch, folder, base_gguf = base
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    back = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=base_gguf.name, dtype=torch.float32)
    torch.testing.assert_close(logits_of(back), logits_of(hf), rtol=0, atol=1e-5)


def round_like_gguf(model, dtype: str):
    """``model`` with every matrix rounded as the exporter stores it (f16, or q8_0 blocks of 32 along rows)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and dtype == "f16":
                p.copy_(p.half().float())
            elif p.ndim == 2 and dtype == "q8_0":
                q = gguf.GGMLQuantizationType.Q8_0
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q), q)))
    return model


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_merged_gguf_matches_peft_merge(base, tmp_path, dtype):
    """The merged GGUF loads in transformers and gives PEFT's merged logits (with the same weight rounding)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    arch, folder, base_gguf = base
    adapter = make_adapter(folder, tmp_path / "adapter", targets=ATTN + MLP)
    out = merge_to_gguf(str(base_gguf), adapter, tmp_path / "out" / f"merged-{dtype}.gguf", dtype=dtype)

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32), str(adapter)
    ).merge_and_unload()
    exact = logits_of(reference)
    merged = AutoModelForCausalLM.from_pretrained(str(Path(out).parent), gguf_file=Path(out).name, dtype=torch.float32)
    got = logits_of(merged)
    torch.testing.assert_close(got, logits_of(round_like_gguf(reference, dtype)), rtol=0, atol=1e-4)
    base_logits = logits_of(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))
    moved, error = (exact - base_logits).abs().max(), (got - exact).abs().max()
    assert error < moved / 10, f"rounding {dtype} moved the logits by {error:.3g}, the adapter by {moved:.3g}"

    reader, tensors = read_gguf(out)
    base_reader, base_tensors = read_gguf(base_gguf)
    assert list(tensors) == list(base_tensors)
    assert gguf_field(reader, "tokenizer.ggml.tokens") == gguf_field(base_reader, "tokenizer.ggml.tokens")
    assert gguf_field(reader, "general.architecture") == arch
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    file_types["q8_0"] = gguf.LlamaFileType.MOSTLY_Q8_0
    assert gguf_field(reader, "general.file_type") == file_types[dtype]
    norm = tensors[gguf_name(arch, "input_layernorm", 0)]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    q_type = tensors[gguf_name(arch, "self_attn.q_proj", 0)].tensor_type
    assert q_type.name == dtype.upper()


def test_merge_keeps_a_trained_lm_head_of_a_tied_base(tmp_path):
    """A tied base GGUF has no output.weight: a trained lm_head (modules_to_save) is added as one, not dropped."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = make_base("qwen2")
    model.save_pretrained(tmp_path / "base")
    base_gguf = save_tiny_gguf(model, tokenizer, tmp_path / "base" / "tiny.gguf")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter", modules_to_save=["lm_head"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k: (v + 0.5 if "lm_head" in k else v) for k, v in tensors.items()}, adapter / "adapter_model.safetensors"
    )
    out = Path(merge_to_gguf(str(base_gguf), adapter, tmp_path / "out" / "m.gguf", dtype="f32"))
    assert "output.weight" in read_gguf(out)[1]
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32), str(adapter)
    ).merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32)
    torch.testing.assert_close(logits_of(merged), logits_of(reference), rtol=0, atol=1e-4)


def test_merge_refuses_a_model_that_was_never_gguf(tmp_path):
    model, tokenizer = make_base("qwen2")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(tmp_path / "base", tmp_path / "adapter")
    with pytest.raises(GGUFExportError, match="convert_hf_to_gguf.py"):
        merge_to_gguf(str(tmp_path / "base"), adapter, tmp_path / "m.gguf")
    with pytest.raises(GGUFExportError, match="dtype"):
        merge_to_gguf(str(tmp_path / "base"), adapter, tmp_path / "m.gguf", dtype="q4_k")


# ----------------------------------------------------------------------------------------------------------------
# the export command


def test_export_command(base, tmp_path, capsys):
    from trl_reasonmaxxer.scripts.export import ExportArguments, main, make_parser

    arch, folder, base_gguf = base
    adapter = make_adapter(folder, tmp_path / "adapter")
    recipe = tmp_path / "export.yaml"
    recipe.write_text(f"adapter: {adapter}\nmodel_name_or_path: {base_gguf}\nmerged: true\nmerged_dtype: f32\n")
    (args,) = make_parser().parse_args_and_config(["--config", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert isinstance(args, ExportArguments) and args.merged and args.merged_dtype == "f32"
    paths = main(args)
    printed = capsys.readouterr().out
    assert Path(paths["lora"]).is_file() and Path(paths["merged"]).is_file()
    assert f"FROM {base_gguf}" in printed and f"ADAPTER {paths['lora']}" in printed
    assert f"llama-cli -m {base_gguf} --lora {paths['lora']}" in printed
    assert f"FROM {paths['merged']}" in printed
    with pytest.raises(SystemExit):
        make_parser().parse_args_and_config(["--adapter", str(adapter), "--merged_dtype", "q4"])


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp itself (only when llama-cpp-python is installed)

needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama_cpp (llama-cpp-python) is not installed")


def llama_cpp_logits(model_path, lora_path=None) -> np.ndarray:
    """Next-token logits at every position of ``PROMPT`` but the last from llama.cpp (the engine with a float32 KV
    cache and attention: its f16 defaults alone move these logits by 4-6e-3, float32 by ~3e-6), optionally with a
    GGUF LoRA applied."""
    from trl_reasonmaxxer.llama_engine import LlamaEngine

    eos = {make_tiny_tokenizer().eos_token_id}
    engine = LlamaEngine(str(model_path), eos, n_threads=1, lora_path=lora_path and str(lora_path), kv_type="f32")
    try:
        return engine.next_token_logits(PROMPT[0][:1], PROMPT[0][1:])
    finally:
        engine.close()


def hf_logits(model) -> np.ndarray:
    """transformers' logits at the positions ``llama_cpp_logits`` returns."""
    return logits_of(model)[:-1].numpy()


@needs_llama_cpp
def test_llama_cpp_applies_the_lora_like_peft(base, tmp_path):
    """The adapter's logit change in llama.cpp equals PEFT's (float32 weights, KV cache and attention: ~5e-6 apart here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    arch, folder, base_gguf = base
    adapter = make_adapter(folder, tmp_path / "adapter", targets=ATTN + MLP, use_rslora=True)
    lora = peft_to_gguf_lora(adapter, tmp_path / "lora.gguf")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    hf_base = hf_logits(hf)
    hf_lora = hf_logits(PeftModel.from_pretrained(hf, str(adapter)))
    cpp_base = llama_cpp_logits(base_gguf)
    cpp_lora = llama_cpp_logits(base_gguf, lora)
    np.testing.assert_allclose(cpp_base, hf_base, atol=1e-4)
    delta_hf, delta_cpp = hf_lora - hf_base, cpp_lora - cpp_base
    assert np.abs(delta_hf).max() > 0.5
    np.testing.assert_allclose(delta_cpp, delta_hf, atol=1e-4)


@needs_llama_cpp
def test_llama_cpp_loads_the_merged_gguf(base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    arch, folder, base_gguf = base
    adapter = make_adapter(folder, tmp_path / "adapter", targets=ATTN + MLP)
    merged = merge_to_gguf(str(base_gguf), adapter, tmp_path / "merged.gguf", dtype="f32")
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32), str(adapter)
    ).merge_and_unload()
    np.testing.assert_allclose(llama_cpp_logits(merged), hf_logits(reference), atol=1e-4)
