"""Sampling completions from a frozen model with HF ``generate``, keeping the exact token ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria
from trl.data_utils import is_conversational


logger = logging.getLogger(__name__)

# Every GenerationConfig field that changes which tokens `generate` samples, at its neutral value. `generate` takes
# each field it is not given from the model's `generation_config` (Qwen2.5-*-Instruct ships top_k 20, top_p 0.8,
# repetition_penalty 1.05), so the rollouts pass them all: they are then plain samples of the configured
# temperature / top_p / top_k / min_p / repetition_penalty, whatever the checkpoint, and the same distribution as
# the vLLM backend's. `generation_kwargs` still override any of them.
NEUTRAL_GENERATION_KWARGS = dict(
    num_beams=1,
    num_beam_groups=1,
    diversity_penalty=0.0,
    num_return_sequences=1,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    top_h=None,
    encoder_repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    bad_words_ids=None,
    sequence_bias=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    min_length=0,
    min_new_tokens=None,
    exponential_decay_length_penalty=None,
    guidance_scale=None,
    watermarking_config=None,
    renormalize_logits=False,
    remove_invalid_values=False,
    stop_strings=None,
    token_healing=False,
)
# Above this share of truncated rollouts the pool gets a warning naming max_completion_length
TRUNCATION_WARNING_RATE = 0.2


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
    else:
        if not isinstance(prompt, str):
            raise ValueError(f"A `prompt` must be a string or a list of chat messages, got {type(prompt).__name__}.")
        ids = tokenizer(text=prompt)["input_ids"]
    if len(ids) == 0:
        raise ValueError(
            f"The prompt {prompt!r} is encoded as no token at all (an empty prompt, with a tokenizer that adds no BOS "
            "token). The base model needs at least one prompt token to predict the first completion token from: "
            "remove empty prompts from the dataset, or give them some text."
        )
    return list(ids)


def eos_token_ids(tokenizer, model) -> set[int]:
    """The tokenizer's EOS plus every EOS the model's generation config declares (as GRPOTrainer does)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return ids


def completion_row(ids: Sequence[int], eos_ids: set[int], sampled: int | None = None) -> dict:
    """One rollout row from generated ids: cut after the first EOS (kept), ``truncated`` when there is none.

    ``sampled``: how many leading ``ids`` were sampled, when a stopping criterion ended the row early and
    ``generate`` padded the rest (the padding is never part of the row, even when the pad id is an EOS id); None:
    every id up to the first EOS was sampled. This is the row format of every rollout backend (HF ``generate``
    here, vLLM in ``vllm_backend``).
    """
    ids = list(ids if sampled is None else ids[:sampled])
    for i, t in enumerate(ids):
        if t in eos_ids:
            return {"completion_ids": ids[: i + 1], "truncated": False}
    return {"completion_ids": ids, "truncated": True}


def warn_if_truncated(truncated: Sequence[bool], max_completion_length: int | None) -> float:
    """The share of rollouts that ended without an EOS; above ``TRUNCATION_WARNING_RATE``, one warning naming
    ``max_completion_length``."""
    rate = sum(bool(t) for t in truncated) / max(len(truncated), 1)
    if rate > TRUNCATION_WARNING_RATE:
        logger.warning(
            "%.0f%% of the pool's %d rollouts ended without an EOS token: they hit max_completion_length=%s (or a "
            "stop criterion). A cut reasoning chain is usually graded wrong, which turns solvable problems into "
            "failures and biases selection and advantages against long answers. Raise max_completion_length (the "
            "paper samples up to 8192 tokens), or set mask_truncated_completions=True to leave truncated rollouts "
            "out of selection and training.",
            100 * rate,
            len(truncated),
            max_completion_length,
        )
    return rate


class StopRecorder(StoppingCriteria):
    """Runs the caller's stopping criteria and records, per row, how many tokens the row had sampled when they first
    stopped it: ``generate`` pads a stopped row while the other rows go on, and with pad = EOS (Qwen2.5, or a
    tokenizer whose pad the trainer set to EOS) that padding would pass for a sampled EOS."""

    def __init__(self, criteria: Sequence[StoppingCriteria]):
        self.criteria = StoppingCriteriaList(criteria)
        self.start = 0
        self.stopped_at: list[int | None] = []

    def reset(self, start: int, rows: int) -> None:
        self.start, self.stopped_at = start, [None] * rows

    def __call__(self, input_ids, scores, **kwargs):
        done = self.criteria(input_ids, scores, **kwargs)
        for row in done.nonzero().flatten().tolist():
            if self.stopped_at[row] is None:
                self.stopped_at[row] = input_ids.shape[1] - self.start
        return done


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
    top_k: int | None = 0,
    do_sample: bool = True,
    batch_size: int = 32,
    seed: int | None = 0,
    desc: str = "Sampling",
    disable_progress: bool = False,
    generation_kwargs: dict | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> list[list[dict]]:
    """Sample ``num_generations`` completions for every prompt (given as token ids).

    Returns, per prompt, a list of ``{"completion_ids": [...], "truncated": bool}``; a completion keeps
    its EOS token, and ``truncated`` is True when it ended without one (it hit ``max_new_tokens``, or a stopping
    criterion of ``generation_kwargs`` stopped it). Prompts are left-padded in batches of up to ``batch_size``
    sequences, and each batch is seeded with ``seed + index of its first prompt``: when
    ``num_generations > batch_size // 2`` every batch holds one prompt, so a prompt's samples do not depend on which
    other prompts (or processes) exist.

    Every sampling setting goes to ``generate`` explicitly (``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``repetition_penalty``, and :data:`NEUTRAL_GENERATION_KWARGS` for the rest), so nothing is inherited from the
    model's ``generation_config``. ``generation_kwargs`` go to ``generate`` last, overriding those;
    ``stopping_criteria`` and ``stop_strings`` among them end a row without making up an EOS for it.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(
                f"Prompt {i} has no token: the model needs at least one prompt token to predict the first "
                "completion token from. Remove empty prompts, or give them some text."
            )
    eos_ids = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts_per_batch = max(1, batch_size // num_generations)
    results: list[list[dict]] = []
    gen_kwargs = dict(
        NEUTRAL_GENERATION_KWARGS,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
        repetition_penalty=repetition_penalty,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or None, min_p=min_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
    gen_kwargs.update(generation_kwargs or {})
    user_stops = list(gen_kwargs.pop("stopping_criteria", None) or [])
    if gen_kwargs.get("stop_strings"):
        user_stops.append(StopStringCriteria(tokenizer, gen_kwargs.pop("stop_strings")))
    recorder = StopRecorder(user_stops) if user_stops else None
    # the bar counts decoding steps (max_new_tokens per batch, so its ETA is an upper bound)
    num_batches = -(-len(prompt_ids) // prompts_per_batch)
    bar = tqdm(total=num_batches * max_new_tokens, desc=desc, unit="step", disable=disable_progress)
    gen_kwargs["stopping_criteria"] = StoppingCriteriaList([c for c in (recorder, StepProgress(bar)) if c is not None])
    try:
        for b, start in enumerate(range(0, len(prompt_ids), prompts_per_batch), 1):
            batch = [list(p) for p in prompt_ids[start : start + prompts_per_batch]]
            if seed is not None:
                torch.manual_seed(seed + start)
            if recorder is not None:
                recorder.reset(max(len(p) for p in batch), len(batch) * num_generations)
            generated = _generate_batch(model, batch, num_generations, pad_id, device, gen_kwargs)
            sampled = recorder.stopped_at if recorder is not None else [None] * len(generated)
            rows = [completion_row(c, eos_ids, n) for c, n in zip(generated, sampled, strict=True)]
            for i in range(len(batch)):
                results.append(rows[i * num_generations : (i + 1) * num_generations])
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
