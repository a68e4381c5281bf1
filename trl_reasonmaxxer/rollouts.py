"""Sampling completions from a frozen model with HF ``generate``, keeping the exact token ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList
from trl.data_utils import is_conversational


def tokenize_prompt(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of one prompt as the model sees it: chat template for messages, plain encoding for text.

    Mirrors GRPOTrainer: conversational prompts get ``add_generation_prompt=True``; plain strings are
    encoded as they are (special tokens included, as the tokenizer adds them).
    """
    if is_conversational({"prompt": prompt}):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "The dataset has chat-format prompts (lists of {'role', 'content'} messages) but the tokenizer "
                "has no chat template. Pass a tokenizer with a `chat_template` (processing_class=...) or give "
                "the `prompt` column as plain strings."
            )
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **(chat_template_kwargs or {})
        )["input_ids"]
        return list(ids)
    if not isinstance(prompt, str):
        raise ValueError(f"A `prompt` must be a string or a list of chat messages, got {type(prompt).__name__}.")
    return list(tokenizer(text=prompt)["input_ids"])


def eos_token_ids(tokenizer, model) -> set[int]:
    """The tokenizer's EOS plus every EOS the model's generation config declares (as GRPOTrainer does)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return ids


def completion_row(ids: list[int], eos_ids: set[int], pad_id: int | None = None) -> dict:
    """One rollout row from generated ids: cut after the first EOS (kept), ``truncated`` when there is none.

    This is the row format of every rollout backend (HF ``generate`` here, vLLM in ``vllm_backend``).
    """
    for i, t in enumerate(ids):
        if t in eos_ids:
            return {"completion_ids": list(ids[: i + 1]), "truncated": False}
    ids = list(ids)
    if pad_id is not None and pad_id not in eos_ids:
        # generate pads finished rows; an unfinished row never contains pad unless the model sampled it
        while ids and ids[-1] == pad_id:
            ids = ids[:-1]
    return {"completion_ids": ids, "truncated": True}


class StepProgress(StoppingCriteria):
    """Advances a progress bar once per decoding step and never stops generation: a CPU batch of 32 long
    completions takes minutes, and a bar that moves only between batches gives no ETA."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    num_generations: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 0,
    do_sample: bool = True,
    batch_size: int = 32,
    seed: int | None = 0,
    desc: str = "Sampling",
    disable_progress: bool = False,
    generation_kwargs: dict | None = None,
) -> list[list[dict]]:
    """Sample ``num_generations`` completions for every prompt (given as token ids).

    Returns, per prompt, a list of ``{"completion_ids": [...], "truncated": bool}``; a completion keeps
    its EOS token, and ``truncated`` is True when it hit ``max_new_tokens`` without one. Prompts are
    left-padded in batches of up to ``batch_size`` sequences, and each batch is seeded with
    ``seed + index of its first prompt``: when ``num_generations > batch_size // 2`` every batch holds one
    prompt, so a prompt's samples do not depend on which other prompts (or processes) exist. ``generation_kwargs``
    go to ``generate`` as they are (e.g. ``repetition_penalty``, ``min_p``).
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
    eos_ids = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts_per_batch = max(1, batch_size // num_generations)
    results: list[list[dict]] = []
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
        **(generation_kwargs or {}),
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    # the bar counts decoding steps (max_new_tokens per batch, so its ETA is an upper bound)
    num_batches = -(-len(prompt_ids) // prompts_per_batch)
    bar = tqdm(total=num_batches * max_new_tokens, desc=desc, unit="step", disable=disable_progress)
    gen_kwargs["stopping_criteria"] = StoppingCriteriaList(
        [*gen_kwargs.get("stopping_criteria", []), StepProgress(bar)]
    )
    try:
        for b, start in enumerate(range(0, len(prompt_ids), prompts_per_batch), 1):
            batch = [list(p) for p in prompt_ids[start : start + prompts_per_batch]]
            if seed is not None:
                torch.manual_seed(seed + start)
            generated = _generate_batch(model, batch, num_generations, pad_id, device, gen_kwargs)
            for i in range(len(batch)):
                group = generated[i * num_generations : (i + 1) * num_generations]
                results.append([completion_row(c, eos_ids, pad_id) for c in group])
            bar.update(b * max_new_tokens - bar.n)  # a batch whose rows all ended early skips its remaining steps
            bar.set_postfix(seqs=f"{len(results) * num_generations}/{len(prompt_ids) * num_generations}")
    finally:
        bar.close()
        model.train(was_training)
    return results


def _generate_batch(model, prompts: list[list[int]], n: int, pad_id: int, device, gen_kwargs) -> list[list[int]]:
    """Left-pad ``prompts`` (each repeated ``n`` times, adjacent) and return only the new tokens."""
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(n)]
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
    return out[:, width:].tolist()
