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


def make_tiny_model(tokenizer, hidden_size: int = 16, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Llama with q/k/v/o projections (the paper's LoRA targets)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
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
