"""Tiny, fully local models and tokenizers for tests, smoke runs and ``--quick`` benchmarks (no hub)."""

from __future__ import annotations

import os


# A toy arithmetic language: every word of it is in the vocabulary, so tests can write prompts freely.
TINY_CORPUS = [
    "what is 1 plus 1 ? the answer is 2",
    "what is 2 plus 2 ? the answer is 4",
    "what is 3 plus 4 ? the answer is 7",
    "0 1 2 3 4 5 6 7 8 9 plus minus times equals answer is what the yes no a b c",
    "solve step by step and say the answer so then because therefore #### boxed",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer(chat_template: bool = True):
    """A word-level tokenizer over ``TINY_CORPUS`` (about 45 tokens); EOS is ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces when decoding
    tok.train_from_iterator(TINY_CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE if chat_template else None,
    )


def make_tiny_model(tokenizer, hidden_size: int = 16, num_layers: int = 2, seed: int = 0, arch: str = "llama"):
    """A randomly initialised Llama (or Qwen2: ``arch="qwen2"``, with q/k/v biases) with q/k/v/o projections (the
    paper's LoRA targets). ``hidden_size=32`` gives rows that q8_0 blocks of 32 fit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def save_tiny_model(directory: str, chat_template: bool = True, seed: int = 0, **model_kwargs) -> str:
    """Build a tiny model + tokenizer and save both to ``directory`` (loadable by path, offline)."""
    tokenizer = make_tiny_tokenizer(chat_template=chat_template)
    model = make_tiny_model(tokenizer, seed=seed, **model_kwargs)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_gguf(model, tokenizer, path: str | os.PathLike) -> str | os.PathLike:
    """Write a small Llama or Qwen2 ``model`` (and its tokenizer's vocabulary) as a float32 GGUF that llama.cpp and
    transformers' GGUF loader both load; returns ``path``.

    For tests of the llama.cpp engine and of the GGUF exporter: float32 tensors keep llama.cpp's logits within
    rounding of transformers'. Tensor names and the llama q/k row order come from ``gguf_export`` (the gguf package's
    tensor map), so the fixture lays tensors out as the exporter does. The vocabulary is written as a BPE token list
    (the engine gets token ids, never text); tied embeddings are written once, as llama.cpp expects.
    """
    import gguf
    import numpy as np

    from .gguf_export import QK_PERMUTED_ARCHS, permute_qk_rows, tensor_name_map

    cfg = model.config
    arch = cfg.model_type
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"save_tiny_gguf writes llama and qwen2 models, not {arch!r}.")
    n_vocab = cfg.vocab_size
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-test-{arch}")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n_vocab)))
    special = set(tokenizer.all_special_ids)
    writer.add_token_list([t if t is not None else f"<unused{i}>" for i, t in enumerate(tokens)])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n_vocab)])
    writer.add_token_merges([f"{tokens[-2]} {tokens[-1]}"])  # llama.cpp requires the key; ids never get merged
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    name_map = tensor_name_map(arch, cfg.num_hidden_layers)
    heads = {gguf.MODEL_TENSOR.ATTN_Q: cfg.num_attention_heads, gguf.MODEL_TENSOR.ATTN_K: cfg.num_key_value_heads}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:  # tied: the GGUF has no output.weight
            continue
        kind, name = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if arch in QK_PERMUTED_ARCHS and kind in heads:
            tensor = permute_qk_rows(tensor, heads[kind])
        writer.add_tensor(name, np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
