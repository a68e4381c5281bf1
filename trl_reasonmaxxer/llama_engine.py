"""Sampling with llama.cpp on CPU: the rows of ``rollouts.generate_completions``, about 4x as fast.

The engine drives llama.cpp's C API (through ``llama-cpp-python``, the ``cpu`` extra) directly:

- several sequences decode in one ``llama_batch`` (one token per live sequence per step);
- a prompt is prefilled once and its KV cache copied to the slots of its ``num_generations`` samples;
- continuous batching: a finished sequence's slot takes the next request, and the live sequences are kept on
  consecutive sequence ids (llama.cpp splits a batch at every gap in them when each sequence has its own KV cache,
  which is the fast layout on CPU: ``kv_unified=False``);
- one sampler chain per sequence (temperature → top-k → top-p → min-p → draw, HF's order), seeded per
  (prompt, sample) as the vLLM backend seeds, so a run is reproducible and a prompt's samples do not depend on
  which other prompts share the batch.

Token ids come from the HF tokenizer and go to llama.cpp as ids, so prompts and completions are the very ids the
float32 model scores. The log-probabilities of the loss never come from here: llama.cpp quantizes activations
inside its dot products, so its samples are slightly off-policy for the scorer (docs/method.md, "CPU engine").
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .rollouts import completion_row, eos_token_ids


logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'trl-reasonmaxxer[cpu]'"
MIN_VERSION = (0, 3, 36)
GGUF_MAGIC = b"GGUF"
# The config's sampling fields the engine reproduces (generation_kwargs naming them included); a repetition_penalty
# other than 1 or any other generation_kwargs key keeps HF generate
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "max_completion_length")
# KV cache types. "f16": llama.cpp's defaults (f16 cache, flash attention where llama.cpp picks it), which move a
# tiny float32 model's logits by ~1e-4 of their scale; "f32": f32 cache without flash attention (whose CPU kernel
# computes in f16), within float32 rounding of transformers' logits, for fidelity checks
KV_TYPES = {"f16": "GGML_TYPE_F16", "f32": "GGML_TYPE_F32"}


class LlamaCppUnavailableError(ImportError):
    """The ``cpu`` extra (llama-cpp-python) is not installed, or too old."""


class GGUFNotFoundError(FileNotFoundError):
    """No GGUF file for the llama.cpp engine."""


# ---------------------------------------------------------------------------------------------------------
# Availability, model files, threads


def llama_cpp_importable() -> bool:
    """Whether ``import llama_cpp`` would work (found without importing it: that takes a second)."""
    return importlib.util.find_spec("llama_cpp") is not None


def import_llama_cpp():
    """The ``llama_cpp`` module, or one clear error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as err:
        raise LlamaCppUnavailableError(
            f"The llama.cpp engine needs llama-cpp-python >= {'.'.join(map(str, MIN_VERSION))}. Install it with "
            f"`{INSTALL_HINT}` (it compiles llama.cpp once: about 10 minutes on 2 cores; pip caches the wheel), or "
            "set use_llama_cpp=False to generate with transformers."
        ) from err
    version = tuple(int(x) for x in llama_cpp.__version__.split(".")[:3] if x.isdigit())
    if version < MIN_VERSION:
        raise LlamaCppUnavailableError(
            f"llama-cpp-python {llama_cpp.__version__} is installed; the engine needs >= "
            f"{'.'.join(map(str, MIN_VERSION))} (`{INSTALL_HINT}`)."
        )
    _quiet_logs(llama_cpp)
    return llama_cpp


GGML_LOG_ERROR, GGML_LOG_CONT = 4, 5  # ggml's enum ggml_log_level (llama-cpp-python's own table predates it)
_LOG_CALLBACK = None
_LOG_TAIL: list[str] = []


def _quiet_logs(lib) -> None:
    """Silence llama.cpp's log (it reports every tensor it loads), keeping its last error lines for this module's
    exceptions, which quote them."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    state = {"level": 0}

    def callback(level, text, user_data):
        if level != GGML_LOG_CONT:
            state["level"] = level
        if state["level"] == GGML_LOG_ERROR:
            message = text.decode("utf-8", errors="replace")
            _LOG_TAIL.append(message)
            del _LOG_TAIL[:-20]

    _LOG_CALLBACK = lib.llama_log_callback(callback)  # kept alive: llama.cpp holds the pointer
    lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _log_tail() -> str:
    """The last error lines llama.cpp logged, to quote in an exception."""
    text = "".join(_LOG_TAIL).strip()
    _LOG_TAIL.clear()
    return f" llama.cpp said: {text}" if text else ""


def check_gguf_path(path: str | os.PathLike) -> str:
    """``path`` as a string if it is a GGUF file, else a clear error."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GGUFNotFoundError(f"llama_cpp_model_path={str(path)!r} does not exist: pass the path of a .gguf file.")
    if p.is_dir():
        raise GGUFNotFoundError(
            f"llama_cpp_model_path={str(path)!r} is a folder: pass the .gguf file itself (llama.cpp loads one file)."
        )
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{str(path)!r} is not a GGUF file (it does not start with 'GGUF').")
    return str(p)


def model_folder(model) -> str | None:
    """The folder (or hub id) a loaded model came from, looking through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_name_or_path", None) or None


def max_threads() -> int:
    """The most threads llama.cpp may use: ``OMP_NUM_THREADS`` when set (as torch reads it), else the cores this
    process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def busy_cores(interval: float = 0.3) -> float | None:
    """Cores kept busy by other processes, from ``/proc/stat`` over ``interval`` seconds while this one sleeps
    (None where there is no ``/proc/stat``). This process's own CPU time is not counted: torch's OpenMP threads keep
    spinning for a while after each operation, and counting them as other work would halve the engine's threads."""

    def snapshot() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return sum(values), values[3] + values[4], int(own[11]) + int(own[12])  # all, idle + iowait, utime + stime

    try:
        before = snapshot()
        time.sleep(interval)
        after = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return other_busy_cores(before, after, os.cpu_count() or 1)


def other_busy_cores(before: tuple[int, int, int], after: tuple[int, int, int], cores: int) -> float | None:
    """Cores busy with other processes between two ``(all, idle, own)`` tick snapshots (None without ticks)."""
    total, idle, own = (a - b for a, b in zip(after, before))
    if total <= 0:
        return None
    return max(0.0, (total - idle - own) / total) * cores


def free_threads(limit: int | None = None) -> tuple[int, str]:
    """``(threads, why)``: the cores other processes leave free, at most ``limit`` (default :func:`max_threads`).

    llama.cpp's threads wait for each other at every operation, so one thread on a core that another process also
    uses stalls them all: on 2 busy cores, 2 threads made 9-11 tokens/s where 1 thread made 32-38."""
    limit = limit or max_threads()
    busy = busy_cores()
    if busy is None:
        return limit, f"{limit} (all cores)"
    free = int((os.cpu_count() or 1) - busy + 0.3)
    threads = max(1, min(limit, free))
    return threads, f"{threads} of {limit} ({busy:.1f} cores busy with other work)"


def describe_threads(n_threads: int | None) -> str:
    """How the engine picks its threads, for the engine's log line."""
    if n_threads:
        return f"n_threads={n_threads}"
    threads, why = free_threads()
    return f"n_threads: the free cores at each call, now {why}; llama_cpp_n_threads fixes it"


_ANNOUNCED: set[str] = set()


def announce(message: str, key: str | None = None) -> None:
    """One user-facing line, once per process and ``key`` (default: the message): through logging when it shows
    INFO, else on stderr (like ``default_model``'s progress lines)."""
    key = key or message
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    if logger.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
        logger.info(message)
    else:
        sys.stderr.write(f"[trl_reasonmaxxer] {message}\n")
        sys.stderr.flush()


def install_hint_once() -> None:
    """The single info line of a CPU run without the extra."""
    announce(
        "generation: transformers generate (float32). About 4x faster on CPU: the llama.cpp engine, "
        f"`{INSTALL_HINT}` (a one-time build of about 10 minutes); it is used by itself with the embedded default "
        "model, or with llama_cpp_model_path=<the model's .gguf>.",
        key="install-hint",
    )


# ---------------------------------------------------------------------------------------------------------
# Pure helpers: requests, seeds, slots


@dataclass
class Request:
    """One sequence to sample: sample ``sample`` of prompt ``prompt`` (its position in the call)."""

    prompt: int
    sample: int
    seed: int | None
    tokens: list[int] = field(default_factory=list)


def make_requests(
    num_prompts: int, num_generations: int, seed: int | None, prompt_indices: Sequence[int] | None = None
) -> list[Request]:
    """Requests in order (prompt-major). Sample ``j`` of the prompt with global index ``i`` is seeded with
    ``seed + i * num_generations + j`` (the vLLM backend's seeds), so it does not depend on the batch it lands in."""
    indices = list(range(num_prompts)) if prompt_indices is None else list(prompt_indices)
    if len(indices) != num_prompts:
        raise ValueError(f"Got {len(indices)} prompt indices for {num_prompts} prompts.")
    return [
        Request(p, j, None if seed is None else (seed + indices[p] * num_generations + j) & 0x7FFFFFFF)
        for p in range(num_prompts)
        for j in range(num_generations)
    ]


def admit(queue_len: int, free_slots: Sequence[int]) -> list[tuple[int, int]]:
    """(queue position, slot) pairs for this round: the next requests, in order, into the lowest free slots."""
    return list(zip(range(queue_len), sorted(free_slots)))


def compaction_moves(live: Sequence[int]) -> list[tuple[int, int]]:
    """(from, to) slot moves that put the live slots on 0..k-1: the highest live slot fills the lowest hole.

    llama.cpp decodes the sequences of one batch together only while their ids are consecutive."""
    live = sorted(live)
    k = len(live)
    holes = [s for s in range(k) if s not in set(live)]
    movers = [s for s in reversed(live) if s >= k]
    return list(zip(movers, holes))


def context_cells(prompt_lengths: Sequence[int], max_new_tokens: int) -> int:
    """KV cells one sequence needs: its longest prompt plus the new tokens (llama.cpp pads to 256)."""
    need = max(prompt_lengths) + max_new_tokens
    return -(-need // 256) * 256


# ---------------------------------------------------------------------------------------------------------
# The engine


class LlamaEngine:
    """Batched sampling from a GGUF with llama.cpp (optionally with a GGUF LoRA adapter applied at ``lora_scale``).

    ``kv_type``: ``"f16"`` (llama.cpp's defaults: f16 KV cache and flash attention, what sampling uses) or
    ``"f32"`` (f32 KV cache, no flash attention: float32 attention, slower, for fidelity checks).

    ``generate_completions`` takes the arguments of :func:`~trl_reasonmaxxer.rollouts.generate_completions` (minus
    model and tokenizer) and returns the same rows; ``eos_ids`` is the HF stop set (``rollouts.eos_token_ids``).
    """

    def __init__(
        self,
        model_path: str,
        eos_ids: set[int] | Sequence[int],
        n_threads: int | None = None,
        lora_path: str | None = None,
        lora_scale: float = 1.0,
        kv_unified: bool = False,
        kv_type: str = "f16",
    ):
        self.lib = import_llama_cpp()
        self.model_path = check_gguf_path(model_path)
        self.eos_ids = set(eos_ids)
        if not self.eos_ids:
            raise ValueError("The llama.cpp engine needs the EOS token ids that end a completion.")
        self.n_threads = n_threads  # None: the free cores, measured at each call
        self.kv_unified = kv_unified
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}.")
        self.kv_type = kv_type  # read when a context is made (at each call)
        self.lora_path, self.lora_scale = lora_path, lora_scale
        self.workdir: str | None = None  # a temporary folder (the converted adapter) that close() removes
        self.model = None
        lib = self.lib
        _backend_init(lib)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        _LOG_TAIL.clear()
        self.model = lib.llama_model_load_from_file(self.model_path.encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {self.model_path!r}.{_log_tail()}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.adapter = None
        self.set_lora(lora_path, lora_scale)

    def set_lora(self, lora_path: str | None, lora_scale: float = 1.0) -> None:
        """Apply the GGUF LoRA ``lora_path`` (None: none) from the next call on, in place of the current one; the
        base model stays loaded."""
        lib, adapter = self.lib, None
        if lora_path is not None:
            check_gguf_path(lora_path)
            _LOG_TAIL.clear()
            adapter = lib.llama_adapter_lora_init(self.model, str(lora_path).encode())
            if not adapter:
                raise ValueError(
                    f"llama.cpp could not load the LoRA adapter {str(lora_path)!r} for {self.model_path!r} (a GGUF "
                    f"LoRA of this base model is needed, see trl_reasonmaxxer.gguf_export).{_log_tail()}"
                )
        if self.adapter:
            lib.llama_adapter_lora_free(self.adapter)
        self.adapter, self.lora_path, self.lora_scale = adapter, lora_path, lora_scale

    # -- metadata
    def token_text(self, token: int) -> str:
        return self.lib.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def check_tokenizer(self, tokenizer) -> None:
        """Token ids go to llama.cpp as they are: the GGUF's vocabulary must be the tokenizer's. Checks the size and
        the stop tokens' text (cheap, and catches a GGUF of another model)."""
        if len(tokenizer) > self.n_vocab:
            raise ValueError(
                f"The GGUF {self.model_path!r} has {self.n_vocab} tokens but the tokenizer has {len(tokenizer)}: it is "
                "not this model's GGUF."
            )
        for token in sorted(self.eos_ids):
            hf, gguf = tokenizer.convert_ids_to_tokens(token), self.token_text(token)
            if hf != gguf:
                raise ValueError(
                    f"Token {token} is {hf!r} in the tokenizer but {gguf!r} in {self.model_path!r}: the GGUF's "
                    "vocabulary differs from the tokenizer's, so it is not this model's GGUF."
                )

    # -- contexts
    def threads(self) -> int:
        return self.n_threads or free_threads()[0]

    def _context(self, n_seq: int, cells_per_seq: int, n_batch: int, n_outputs: int | None = None):
        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_ctx = cells_per_seq * n_seq
        params.n_seq_max = n_seq
        params.n_batch = params.n_ubatch = n_batch
        if n_outputs is not None:
            params.n_outputs_max = n_outputs
        self.last_threads = self.threads()
        params.n_threads = params.n_threads_batch = self.last_threads
        params.kv_unified = self.kv_unified
        params.type_k = params.type_v = getattr(lib, KV_TYPES[self.kv_type])
        if self.kv_type == "f32":  # the CPU flash-attention kernel computes in f16 whatever the cache's type
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = lib.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context for {n_seq} sequences of {cells_per_seq} tokens (out of "
                "memory?): lower the batch size or the completion length."
            )
        if self.adapter is not None:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            scales = (ctypes.c_float * 1)(self.lora_scale)
            if lib.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
                lib.llama_free(ctx)
                raise RuntimeError(f"llama.cpp could not apply the LoRA adapter {self.lora_path!r}.")
        return ctx

    def _sampler(self, do_sample: bool, seed, temperature, top_k, top_p, min_p):
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not do_sample:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        # HF's order: temperature, then top-k, top-p and min-p on the tempered distribution, then a draw
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        if top_k:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(top_k))
        if top_p is not None and top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        if min_p:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(min_p, 1))
        lib.llama_sampler_chain_add(
            chain, lib.llama_sampler_init_dist(lib.LLAMA_DEFAULT_SEED if seed is None else seed)
        )
        return chain

    def _decode(self, ctx, batch, tokens: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence id, wants logits) entries in one call."""
        for i, (token, pos, seq, logits) in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(tokens)
        rc = self.lib.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {len(tokens)} tokens.{_log_tail()}")

    # -- sampling
    def generate_completions(
        self,
        prompt_ids: Sequence[Sequence[int]],
        num_generations: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 0,
        min_p: float | None = None,
        do_sample: bool = True,
        batch_size: int = 32,
        seed: int | None = 0,
        desc: str = "Sampling",
        disable_progress: bool = False,
        prompt_indices: Sequence[int] | None = None,
        share_prompts: bool = True,
    ) -> list[list[dict]]:
        """Per prompt, ``num_generations`` rows ``{"completion_ids", "truncated"}`` (EOS kept), in prompt order.

        ``batch_size`` sequences decode together; ``share_prompts`` prefills a prompt once and copies its KV cache
        to its samples (False: each sample prefills its own copy, the slow reference). Sample ``j`` of prompt ``i``
        is seeded with ``seed + prompt_indices[i] * num_generations + j`` (``prompt_indices`` default to 0, 1, ...).
        """
        from tqdm.auto import tqdm

        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        prompts = [list(p) for p in prompt_ids]
        if not prompts:
            return []
        for p in prompts:
            if not p:
                raise ValueError("A prompt has no tokens; llama.cpp needs at least one to condition on.")
            bad = [t for t in p if not 0 <= t < self.n_vocab]
            if bad:
                raise ValueError(f"Token ids {bad[:5]} are outside the GGUF's vocabulary of {self.n_vocab} tokens.")
        lib = self.lib
        queue = make_requests(len(prompts), num_generations, seed if do_sample else None, prompt_indices)
        total = len(queue)
        slots = max(1, min(batch_size, total))
        share = share_prompts and num_generations > 1
        source = slots  # the sequence id that keeps a prompt's cache while its samples wait for slots
        n_seq = slots + 1 if share else slots
        n_batch = max(512, slots)
        ctx = self._context(n_seq, context_cells([len(p) for p in prompts], max_new_tokens), n_batch)
        batch = lib.llama_batch_init(n_batch, 0, 1)
        mem = lib.llama_get_memory(ctx)
        live: dict[int, Request] = {}  # slot -> request
        samplers: dict[int, object] = {}  # id(request) -> sampler chain
        source_prompt = None  # the prompt whose cache the source sequence holds
        results: list[list[dict | None]] = [[None] * num_generations for _ in prompts]
        bar = tqdm(total=total, desc=desc, unit="seq", disable=disable_progress)
        bar.set_postfix(threads=self.last_threads)
        queue.reverse()  # pop() from the end: the next request
        try:
            while queue or live:
                # 1. admit the next requests into the lowest free slots, prefilling prompt[:-1] once per prompt
                free = [s for s in range(slots) if s not in live]
                admitted = [(queue.pop(), slot) for _, slot in admit(len(queue), free)]
                prefill, copies = [], []
                by_prompt: dict[int, list[int]] = {}
                for request, slot in admitted:
                    live[slot] = request
                    samplers[id(request)] = self._sampler(do_sample, request.seed, temperature, top_k, top_p, min_p)
                    by_prompt.setdefault(request.prompt, []).append(slot)
                for p, group in by_prompt.items():
                    head = prompts[p][:-1]
                    if not head:
                        continue
                    if not share:
                        prefill += [(t, i, s, False) for s in group for i, t in enumerate(head)]
                        continue
                    if source_prompt == p:
                        first = None  # the cache is in the source sequence already
                    else:
                        first = group[0]
                        prefill += [(t, i, first, False) for i, t in enumerate(head)]
                    origin = source if first is None else first
                    copies += [(origin, s) for s in group if s != origin]
                    waiting = queue and queue[-1].prompt == p  # samples of p left for later rounds
                    if waiting and first is not None:
                        copies.append((first, source))
                    source_prompt = p if waiting else None if source_prompt == p else source_prompt
                for start in range(0, len(prefill), n_batch):
                    self._decode(ctx, batch, prefill[start : start + n_batch])
                for src, dst in copies:  # metadata now; llama.cpp copies the data at the next decode
                    lib.llama_memory_seq_rm(mem, dst, -1, -1)
                    lib.llama_memory_seq_cp(mem, src, dst, -1, -1)
                # 2. keep the live sequences on consecutive ids, so that one decode call covers them all
                for src, dst in compaction_moves(list(live)):
                    lib.llama_memory_seq_rm(mem, dst, -1, -1)
                    lib.llama_memory_seq_cp(mem, src, dst, -1, -1)
                    lib.llama_memory_seq_rm(mem, src, -1, -1)
                    live[dst] = live.pop(src)
                # 3. one decode step: the next token of every live sequence (first: the prompt's last token)
                order = sorted(live)
                step = []
                for slot in order:
                    r = live[slot]
                    prompt = prompts[r.prompt]
                    token = r.tokens[-1] if r.tokens else prompt[-1]
                    step.append((token, len(prompt) - 1 + len(r.tokens), slot, True))
                self._decode(ctx, batch, step)
                for i, slot in enumerate(order):
                    r = live[slot]
                    token = lib.llama_sampler_sample(samplers[id(r)], ctx, i)
                    r.tokens.append(token)
                    if token in self.eos_ids or len(r.tokens) >= max_new_tokens:
                        results[r.prompt][r.sample] = completion_row(r.tokens, self.eos_ids)
                        lib.llama_sampler_free(samplers.pop(id(r)))
                        lib.llama_memory_seq_rm(mem, slot, -1, -1)
                        del live[slot]
                        bar.update(1)
        finally:
            bar.close()
            for chain in samplers.values():
                lib.llama_sampler_free(chain)
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
        return results

    def next_token_logits(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]):
        """Teacher-forced logits [len(completion_ids), n_vocab] (numpy float32): row ``j`` is the distribution that
        predicts completion token ``j``. For fidelity checks against the float32 model."""
        import numpy as np

        lib = self.lib
        ids = list(prompt_ids) + list(completion_ids)
        first = len(prompt_ids) - 1  # the position whose output predicts completion token 0
        n_batch = 512
        ctx = self._context(1, context_cells([len(ids)], 0), n_batch, n_outputs=n_batch)
        batch = lib.llama_batch_init(n_batch, 0, 1)
        rows = []
        try:
            entries = [(t, i, 0, first <= i < len(ids) - 1) for i, t in enumerate(ids)]
            for start in range(0, len(entries), n_batch):
                chunk = entries[start : start + n_batch]
                self._decode(ctx, batch, chunk)
                for i, (_, _, _, wanted) in enumerate(chunk):
                    if wanted:
                        ptr = lib.llama_get_logits_ith(ctx, i)
                        rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
        return np.stack(rows) if rows else np.zeros((0, self.n_vocab), dtype=np.float32)

    def close(self) -> None:
        if getattr(self, "model", None):
            if self.adapter:
                self.lib.llama_adapter_lora_free(self.adapter)
                self.adapter = None
            self.lib.llama_model_free(self.model)
            self.model = None
        if getattr(self, "workdir", None):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the bindings may be gone already
            pass


_BACKEND_READY = False


def _backend_init(lib) -> None:
    global _BACKEND_READY
    if not _BACKEND_READY:
        lib.llama_backend_init()
        _BACKEND_READY = True


# ---------------------------------------------------------------------------------------------------------
# Choosing the engine


def weights_match_folder(model, folder: str | os.PathLike) -> bool:
    """Whether ``model``'s base weights (LoRA layers aside) equal the safetensors in ``folder``: a GGUF made from the
    folder is then this model. False for a model changed in memory (``merge_and_unload()``, another dtype)."""
    import torch
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = {n.replace(".base_layer", ""): p for n, p in base.state_dict().items() if "lora_" not in n}
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), "pt") as st:
                for key in st.keys():
                    p = params.get(key)
                    if p is None:
                        return False
                    t = st.get_tensor(key)
                    if p.dtype != t.dtype or p.shape != t.shape or not torch.equal(p.cpu(), t):
                        return False
    return True


def resolve_llama_cpp(
    use_llama_cpp: bool | None,
    model,
    model_path: str | None = None,
    unsupported: Sequence[str] = (),
) -> tuple[str | None, str]:
    """``(GGUF path, why)`` when generation for ``model`` should use llama.cpp, else ``(None, why not)``.

    ``use_llama_cpp=None`` (auto) turns it on when there is no CUDA GPU, the ``cpu`` extra is installed, a GGUF is at
    hand (``model_path``, or the embedded default model's) and ``model``'s weights are those of its folder; ``True``
    raises a clear error for whatever is missing; ``False`` never uses it. ``unsupported`` names the sampling settings
    in use that the engine does not reproduce (they keep HF ``generate``).
    """
    import torch

    if use_llama_cpp is False:
        return None, "use_llama_cpp=False"
    explicit = use_llama_cpp is True
    if explicit:
        import_llama_cpp()
    elif torch.cuda.is_available():
        return None, "a CUDA GPU is available"
    elif not llama_cpp_importable():
        install_hint_once()
        return None, "llama-cpp-python is not installed"
    if unsupported:
        if explicit:
            raise ValueError(
                f"use_llama_cpp=True cannot reproduce {', '.join(unsupported)}: drop them or set use_llama_cpp=False."
            )
        return None, f"the llama.cpp engine does not reproduce {', '.join(unsupported)}"
    if model_path is not None:
        return check_gguf_path(model_path), f"llama_cpp_model_path={model_path}"
    from . import default_model

    folder = model_folder(model) if model is not None else None
    try:  # the embedded default model's GGUF, when the model was loaded from its folder
        path = default_model.embedded_gguf(folder) if folder else None
    except default_model.MissingModelPartsError:
        path = None
    if path is None:
        if explicit:
            raise GGUFNotFoundError(
                "use_llama_cpp=True needs the model as a GGUF file: pass llama_cpp_model_path=<file.gguf> (the "
                "embedded default model has one built in)."
            )
        return None, "no GGUF for this model (pass llama_cpp_model_path=<file.gguf>)"
    if not explicit:
        device = next(model.parameters()).device
        if device.type != "cpu":
            return None, f"the model is on {device}"
        if not weights_match_folder(model, model_folder(model)):
            return (
                None,
                "the model's weights differ from its folder (changed in memory), so its GGUF is not this model",
            )
    return path, "the embedded default model's GGUF"


class LlamaRollouts:
    """The trainer's rollout backend on llama.cpp: ``generate(prompt_ids, prompt_indices)`` → per prompt a list of
    ``{"completion_ids", "truncated"}``, like ``VLLMRollouts``. The GGUF is loaded on the first call, and freed by
    ``close`` once the offline phase is over."""

    def __init__(self, gguf_path: str, eos_ids: set[int], args, tokenizer=None):
        self.gguf_path, self.eos_ids, self.args, self.tokenizer = gguf_path, eos_ids, args, tokenizer
        self.engine: LlamaEngine | None = None

    def generate(self, prompt_ids: Sequence[Sequence[int]], prompt_indices: Sequence[int]) -> list[list[dict]]:
        a = self.args
        if self.engine is None:
            self.engine = LlamaEngine(self.gguf_path, self.eos_ids, n_threads=a.llama_cpp_n_threads)
            if self.tokenizer is not None:
                self.engine.check_tokenizer(self.tokenizer)
        return self.engine.generate_completions(
            prompt_ids,
            num_generations=a.num_generations,
            **sampling_settings(a),
            batch_size=a.rollout_batch_size,
            seed=a.seed,
            prompt_indices=prompt_indices,
            desc="Rollouts (llama.cpp)",
            disable_progress=a.disable_tqdm,
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def sampling_settings(args) -> dict:
    """:meth:`LlamaEngine.generate_completions` keywords from the config's :data:`SAMPLING_FIELDS` as HF ``generate``
    applies them: ``generation_kwargs`` that name one of them win, as in GRPO (``config.split_generation_kwargs``;
    the config's validation already moved them into the fields, this also covers a config changed afterwards), so
    llama.cpp samples the distribution HF would."""
    from .config import split_generation_kwargs

    overrides, _ = split_generation_kwargs(args.generation_kwargs)
    s = {name: overrides.get(name, getattr(args, name)) for name in SAMPLING_FIELDS}
    return dict(
        max_new_tokens=s["max_completion_length"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=s["top_k"] or 0,
        min_p=s["min_p"],
    )


def unsupported_settings(repetition_penalty: float | None = 1.0, generation_kwargs: dict | None = None) -> list[str]:
    """The sampling settings in use that the engine does not reproduce: a ``repetition_penalty`` other than 1 (from
    the config or ``generation_kwargs``), and ``generation_kwargs`` keys other than the sampling fields. The model's
    ``generation_config`` is not among them: the rollouts pass every sampling setting to ``generate`` explicitly."""
    from .config import split_generation_kwargs

    overrides, rest = split_generation_kwargs(generation_kwargs)
    penalty = overrides.get("repetition_penalty", repetition_penalty)
    names = [] if penalty in (None, 1.0) else ["repetition_penalty"]
    rest = {k: v for k, v in rest.items() if not (k == "do_sample" and v is True)}  # the rollouts always sample
    return names + [f"generation_kwargs[{k!r}]" for k in rest]


def rollout_engine(model, tokenizer, args) -> LlamaRollouts | None:
    """The trainer's choice of rollout engine from its config, announced in one line; None means HF ``generate``."""
    if getattr(args, "use_vllm", False):
        return None
    unsupported = unsupported_settings(args.repetition_penalty, args.generation_kwargs)
    path, why = resolve_llama_cpp(args.use_llama_cpp, model, args.llama_cpp_model_path, unsupported)
    if path is None:
        announce(f"rollouts: transformers generate ({why})", key=f"rollouts:hf:{why}")
        return None
    threads = describe_threads(args.llama_cpp_n_threads)
    announce(f"rollouts: llama.cpp engine on {Path(path).name} ({why}; {threads})", key=f"rollouts:llama:{path}")
    return LlamaRollouts(path, eos_token_ids(tokenizer, model), args, tokenizer)


class GRPORollouts:
    """A ``rollout_func`` for TRL's ``GRPOTrainer`` that samples with llama.cpp from ``gguf_path`` plus the policy's
    current LoRA: whenever the trainer's step has changed, its adapter is saved, converted
    (``gguf_export.peft_to_gguf_lora``) and swapped into the loaded engine (a few tens of ms for the 0.5B).

    ``GRPOTrainer(..., peft_config=..., rollout_func=GRPORollouts(gguf_path))``. GRPO's own sampling settings are used
    (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``max_completion_length``, ``generation_kwargs`` naming them,
    as :func:`sampling_settings`); a ``repetition_penalty`` or other ``generation_kwargs`` are refused. Prompts are
    tokenized by the trainer itself, and each prompt's run of ``num_generations`` copies is sampled as one request
    (prefilled once), seeded per call and sample. ``logprobs`` are None: without vLLM GRPO takes every log-prob from
    the policy itself, so the samples are off-policy by llama.cpp's activation rounding, uncorrected, as in the
    ReasonMaxxer trainer (docs/method.md, "CPU engine").
    """

    def __init__(self, gguf_path: str, n_threads: int | None = None):
        self.gguf_path = check_gguf_path(gguf_path)
        self.n_threads = n_threads
        self.engine: LlamaEngine | None = None
        self.workdir: str | None = None
        self.step: int | None = None  # the trainer step whose adapter the engine holds
        self.arch: str | None = None  # the base GGUF's architecture (the converter's q/k layout)
        self.calls = 0

    def _sync(self, trainer) -> None:
        """Load the engine on the first call; export the policy's adapter whenever the step has changed."""
        if self.engine is None:
            problems = unsupported_settings(trainer.args.repetition_penalty, trainer.args.generation_kwargs)
            if problems:
                raise ValueError(f"GRPO rollouts with llama.cpp cannot reproduce {', '.join(problems)}.")
            self.engine = LlamaEngine(self.gguf_path, set(trainer.eos_token_ids), n_threads=self.n_threads)
            self.engine.check_tokenizer(trainer.processing_class)
            self.workdir = tempfile.mkdtemp(prefix="trl_reasonmaxxer_grpo_lora_")
            self.arch = gguf_architecture(self.gguf_path)
            # one call per step when a step's batch is one generation (compare's GRPO): a run resumed from a checkpoint
            # continues the seeds where it stopped
            self.calls = trainer.state.global_step
        if trainer.state.global_step != self.step:
            model = trainer.accelerator.unwrap_model(trainer.model)
            lora, scale = adapter_to_gguf(model, self.workdir, self.arch)
            self.engine.set_lora(lora, scale)
            self.step = trainer.state.global_step

    def __call__(self, prompts: list, trainer) -> dict:
        self._sync(trainer)
        prompt_ids = [list(ids) for ids in trainer._tokenize_prompts(prompts)[0]]  # GRPO's own prompt ids
        runs: list[int] = []  # lengths of the runs of identical prompts (GRPO's sampler repeats each in a row)
        for i, ids in enumerate(prompt_ids):
            if i and ids == prompt_ids[i - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
        n = runs[0] if len(set(runs)) == 1 else 1
        unique = prompt_ids[::n]
        groups = self.engine.generate_completions(
            unique,
            num_generations=n,
            **sampling_settings(trainer.args),
            batch_size=len(prompt_ids),
            seed=trainer.args.seed,
            prompt_indices=[self.calls * len(unique) + i for i in range(len(unique))],  # new seeds at every call
            desc="GRPO rollouts (llama.cpp)",
            disable_progress=trainer.args.disable_tqdm,
        )
        self.calls += 1
        completions = [row["completion_ids"] for group in groups for row in group]
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def grpo_rollout_func(model, use_llama_cpp: bool | None, model_path: str | None = None, n_threads=None):
    """A :class:`GRPORollouts` for GRPO on ``model`` (before PEFT wraps it) when ``use_llama_cpp`` resolves to the
    engine (as :func:`resolve_llama_cpp`), announced in one line; None: GRPO's own ``generate``."""
    path, why = resolve_llama_cpp(use_llama_cpp, model, model_path)
    if path is None:
        announce(f"GRPO rollouts: transformers generate ({why})", key=f"grpo:hf:{why}")
        return None
    announce(
        f"GRPO rollouts: llama.cpp engine on {Path(path).name} + the policy's LoRA, exported at every step ({why}; "
        f"{describe_threads(n_threads)})",
        key=f"grpo:llama:{path}",
    )
    return GRPORollouts(path, n_threads)


def adapter_to_gguf(model, out_dir: str, base_arch: str) -> tuple[str, float]:
    """Save ``model``'s active PEFT adapter and convert it to a GGUF LoRA (``gguf_export.peft_to_gguf_lora``), with
    the in-memory base config (the llama architecture's q/k layout needs its head counts)."""
    from .gguf_export import peft_to_gguf_lora

    name = model.active_adapter
    model.save_pretrained(out_dir, selected_adapters=[name])
    adapter_dir = out_dir if name == "default" else os.path.join(out_dir, name)
    base_config = model.get_base_model().config.to_dict()
    out = os.path.join(out_dir, "adapter.gguf")
    return peft_to_gguf_lora(adapter_dir, out, base_arch=base_arch, base_config=base_config), 1.0


def gguf_architecture(path: str) -> str:
    """``general.architecture`` of a GGUF file."""
    import gguf

    from .gguf_export import gguf_field

    return gguf_field(gguf.GGUFReader(path), gguf.Keys.General.ARCHITECTURE)


def evaluation_engine(
    model, tokenizer, use_llama_cpp: bool | None = None, model_path: str | None = None, n_threads: int | None = None
) -> LlamaEngine | None:
    """The engine :func:`~trl_reasonmaxxer.evaluation.evaluate` samples with, announced in one line; None means HF.

    A PEFT model is evaluated as base GGUF + its adapter converted to a GGUF LoRA, applied at run time."""
    path, why = resolve_llama_cpp(use_llama_cpp, model, model_path)
    if path is None:
        announce(f"evaluation: transformers generate ({why})", key=f"evaluation:hf:{why}")
        return None
    lora, scale, workdir = None, 1.0, None
    if hasattr(model, "peft_config") and getattr(model, "active_adapter", None):
        workdir = tempfile.mkdtemp(prefix="trl_reasonmaxxer_lora_")
        try:
            lora, scale = adapter_to_gguf(model, workdir, gguf_architecture(path))
        except (ImportError, NotImplementedError, ValueError) as err:
            shutil.rmtree(workdir, ignore_errors=True)
            if use_llama_cpp:
                raise
            announce(f"evaluation: transformers generate (the adapter cannot run in llama.cpp: {err})", key=str(err))
            return None
    try:
        engine = LlamaEngine(path, eos_token_ids(tokenizer, model), n_threads, lora_path=lora, lora_scale=scale)
        engine.check_tokenizer(tokenizer)
    except BaseException:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    engine.workdir = workdir  # removed by close()
    announce(
        f"evaluation: llama.cpp engine on {Path(path).name}{' + LoRA adapter' if lora else ''} ({why}; "
        f"{describe_threads(n_threads)})",
        key=f"evaluation:llama:{path}:{bool(lora)}",
    )
    return engine
