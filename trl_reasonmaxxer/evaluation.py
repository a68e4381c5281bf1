"""Evaluate a model (or base + LoRA adapter) on a math task: pass@k, maj@k and greedy accuracy with stderr.

Sampling reuses :func:`trl_reasonmaxxer.rollouts.generate_completions`, so evaluation sees exactly the
prompts and sampling the training rollouts see. Every metric is averaged over problems and reported with its
standard error over problems (the spread that decides whether two models differ).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import torch

from .cache import ChunkCache, chunked, fingerprint
from .llama_engine import evaluation_engine
from .plotting import new_figure, save_figure
from .rewards import call_reward_funcs, canonical_answer, extract_answer, math_accuracy_reward
from .rollouts import generate_completions, tokenize_prompt


logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Pure metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"Need 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n (k samples drawn from n), got n={n}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the most frequent of the first ``k`` answers is correct, else 0.0.

    Ties go to the answer that occurs first; None (no extracted answer) does not vote; 0.0 if nothing voted.
    """
    if len(answers) != len(correct):
        raise ValueError(f"Got {len(answers)} answers but {len(correct)} correctness flags; pass one per sample.")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)} (the number of samples), got k={k}.")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(i for i, a in enumerate(answers[:k]) if a is not None and votes[a] == top)
    return float(bool(correct[winner]))


def avg_at_k(correct: Sequence[bool], k: int) -> float:
    """Mean correctness of the first ``k`` samples (the paper's avg@k for AMC/AIME)."""
    if not 1 <= k <= len(correct):
        raise ValueError(f"avg@k needs 1 <= k <= {len(correct)} (the number of samples), got k={k}.")
    return sum(map(bool, correct[:k])) / k


def mean_and_stderr(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)); the stderr of a single value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_and_stderr needs at least one value.")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _pass_ks(n: int) -> list[int]:
    """The k of the reported pass@k: 1, 2, 4, ... up to n, and n itself."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})


# ---------------------------------------------------------------------------------------------------------
# Evaluation loop


def grade_completions(rows: list[dict], groups: list[list[dict]], tokenizer, reward_fn: Callable) -> list[list[dict]]:
    """Decode, extract and reward every completion in one ``reward_fn`` call, as training rewards its rollouts
    (:func:`~.rewards.call_reward_funcs`: GRPOTrainer's convention, conversational completions for chat prompts,
    every dataset column but ``prompt`` as a keyword argument, repeated per completion). A None (or NaN) reward is
    an ungradable completion: it counts as wrong, and in ``num_ungradable``.
    """
    flat = [(row, c) for row, group in zip(rows, groups) for c in group]
    texts, rewards, _ = call_reward_funcs(
        [reward_fn], [row for row, _ in flat], [c["completion_ids"] for _, c in flat], tokenizer, allow_ungraded=True
    )
    graded = iter(
        {
            "text": text,
            "answer": extract_answer(text),
            "reward": None if math.isnan(r) else r,
            "correct": r > 0.5,  # binary verifiers return 0/1; NaN (ungradable) compares False
            "tokens": len(c["completion_ids"]),
            "truncated": bool(c["truncated"]),
        }
        for (_, c), text, r in zip(flat, texts, rewards)
    )
    return [[next(graded) for _ in group] for group in groups]


def _completion_stats(groups: list[list[dict]], prefix: str = "") -> dict:
    flat = [g for group in groups for g in group]
    return {
        f"{prefix}extraction_rate": sum(g["answer"] is not None for g in flat) / len(flat),
        f"{prefix}mean_completion_tokens": sum(g["tokens"] for g in flat) / len(flat),
        f"{prefix}truncation_rate": sum(g["truncated"] for g in flat) / len(flat),
        f"{prefix}num_ungradable": sum(g["reward"] is None for g in flat),
    }


def _with_stderr(name: str, per_problem: list[float]) -> dict:
    mean, stderr = mean_and_stderr(per_problem)
    return {name: mean, f"{name}_stderr": stderr}


def evaluate(
    model,
    tokenizer,
    dataset,
    num_samples: int = 4,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    greedy: bool = True,
    batch_size: int = 16,
    seed: int = 0,
    reward_fn: Callable = math_accuracy_reward,
    desc: str = "Evaluating",
    return_completions: bool = False,
    use_llama_cpp: bool | None = None,
    llama_cpp_model_path: str | None = None,
    llama_cpp_n_threads: int | None = None,
    resume_dir: str | None = None,
    resume_key=None,
    chunk_problems: int = 50,
) -> dict:
    """Sample ``num_samples`` completions per problem (and one greedy completion if ``greedy``) and score them.

    ``dataset`` holds ``prompt`` (chat messages or text) and ``solution`` columns, as :func:`~.tasks.load_task`
    returns (``id`` is used when present). A completion is correct when ``reward_fn`` (GRPOTrainer signature)
    gives it more than 0.5; None rewards (ungradable gold) count as wrong and are counted in
    ``num_ungradable``.

    Returns ``{"summary": {...}, "records": [...]}``, JSON-serialisable. ``summary`` holds ``pass@k`` for
    k = 1, 2, 4, ..., num_samples (unbiased estimator, averaged over problems; pass@1 is the mean sample
    accuracy), ``maj@<num_samples>``, ``greedy_accuracy``, each with a ``<name>_stderr`` over problems, plus
    extraction rate, mean completion tokens, truncation rate (``greedy_``-prefixed for the greedy
    completions), the settings and ``wall_time_s``. Each record holds a problem's ``id``, ``solution``,
    ``num_correct`` and per-sample ``answers``/``rewards``/``correct``/``completion_tokens``/``truncated``, and the
    greedy completion's ``greedy_answer``/``greedy_reward``/``greedy_correct`` (texts too if ``return_completions``).

    ``use_llama_cpp``, ``llama_cpp_model_path``, ``llama_cpp_n_threads``: sample with llama.cpp on CPU, as the
    trainer's options of the same names (None: when the ``cpu`` extra and the model's GGUF are at hand and the model's
    weights are its folder's; a PEFT adapter is converted to a GGUF LoRA). Its samples are seeded per problem, so they
    differ from ``generate``'s.

    ``resume_dir``: evaluate ``chunk_problems`` problems at a time and keep each chunk's graded completions there as
    it ends, in a folder named by a fingerprint of ``resume_key`` (what identifies the model, e.g. a hash of its
    adapter file: the caller's to give) and of every setting above; chunks already there are reused, so an
    evaluation stopped mid-way resumes at its first missing chunk. On llama.cpp a chunk draws the seeds an unchunked
    run would; on transformers each chunk's batches are seeded from its first problem's index.
    """
    if num_samples < 0 or (num_samples == 0 and not greedy):
        raise ValueError(
            f"Ask for at least one completion: num_samples >= 1 or greedy=True (got {num_samples}, {greedy})."
        )
    rows = list(dataset)
    if not rows:
        raise ValueError("The evaluation dataset is empty.")
    missing = {"prompt", "solution"} - set(rows[0])
    if missing:
        raise ValueError(f"The evaluation dataset needs the columns {sorted(missing)} (see tasks.load_task).")
    start = time.perf_counter()
    prompt_ids = [tokenize_prompt(tokenizer, row["prompt"]) for row in rows]
    ids = [row.get("id", str(i)) for i, row in enumerate(rows)]

    engine = evaluation_engine(model, tokenizer, use_llama_cpp, llama_cpp_model_path, llama_cpp_n_threads)
    sample = engine.generate_completions if engine is not None else partial(generate_completions, model, tokenizer)

    def generate(lo: int, hi: int, n: int, do_sample: bool, label: str) -> list[list[dict]]:
        # llama.cpp seeds every sample from its problem's index; generate seeds a batch from its first prompt's
        where = {"prompt_indices": range(lo, hi)} if engine is not None else {}
        groups = sample(
            prompt_ids[lo:hi],
            num_generations=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            do_sample=do_sample,
            batch_size=batch_size,
            seed=(seed if engine is not None else seed + lo) if do_sample else None,
            desc=f"{desc} ({label})",
            **where,
        )
        return grade_completions(rows[lo:hi], groups, tokenizer, reward_fn)

    def run_chunk(lo: int, hi: int, label: str) -> list[dict]:
        """One row per problem: its sampled completions and its greedy one."""
        sampled = generate(lo, hi, num_samples, True, f"{label}{num_samples} samples") if num_samples else None
        greedy_out = [g[0] for g in generate(lo, hi, 1, False, f"{label}greedy")] if greedy else None
        return [
            {
                "id": ids[lo + i],
                "sampled": None if sampled is None else sampled[i],
                "greedy": None if greedy_out is None else greedy_out[i],
            }
            for i in range(hi - lo)
        ]

    if chunk_problems < 1:
        raise ValueError(f"chunk_problems must be >= 1, got {chunk_problems}.")
    reward_name = getattr(reward_fn, "__qualname__", type(reward_fn).__qualname__)
    settings = (num_samples, greedy, temperature, top_p, max_new_tokens, seed, reward_name)
    if resume_dir is None:
        spans, cache = [range(len(rows))], ChunkCache(None)
    else:
        spans = chunked(range(len(rows)), chunk_problems)
        cache = ChunkCache(os.path.join(resume_dir, fingerprint(resume_key, settings, engine is not None)))
    done: list[dict] = []
    reused = 0
    try:
        for index, span in enumerate(spans):
            lo, hi = span[0], span[-1] + 1
            part = cache.load("evaluation", index)
            if part is not None and [r.get("id") for r in part] == ids[lo:hi]:
                reused += 1
            else:
                label = f"problems {lo + 1}-{hi} of {len(rows)}, " if len(spans) > 1 else ""
                part = run_chunk(lo, hi, label)
                cache.save("evaluation", index, part)
            done.extend(part)
    finally:
        if engine is not None:
            engine.close()
    sampled = [r["sampled"] for r in done] if num_samples else None
    greedy_out = [r["greedy"] for r in done] if greedy else None

    summary: dict = {
        "num_problems": len(rows),
        "num_samples": num_samples,
        "greedy": greedy,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "engine": "transformers" if engine is None else "llama.cpp",
    }
    if resume_dir is not None:  # wall_time_s then covers this run's chunks only
        summary["chunks"] = {"total": len(spans), "reused": reused}
    records = [{"id": id_, "solution": row["solution"]} for id_, row in zip(ids, rows)]
    if sampled is not None:
        for k in _pass_ks(num_samples):
            summary |= _with_stderr(
                f"pass@{k}", [pass_at_k(num_samples, sum(g["correct"] for g in s), k) for s in sampled]
            )
        votes = [([canonical_answer(g["answer"]) for g in s], [g["correct"] for g in s]) for s in sampled]
        summary |= _with_stderr(f"maj@{num_samples}", [maj_at_k(a, c, num_samples) for a, c in votes])
        summary |= _completion_stats(sampled)
        for record, s in zip(records, sampled):
            record |= {
                "num_correct": sum(g["correct"] for g in s),
                "answers": [g["answer"] for g in s],
                "rewards": [g["reward"] for g in s],
                "correct": [g["correct"] for g in s],
                "completion_tokens": [g["tokens"] for g in s],
                "truncated": [g["truncated"] for g in s],
            }
            if return_completions:
                record["completions"] = [g["text"] for g in s]
    if greedy_out is not None:
        summary |= _with_stderr("greedy_accuracy", [float(g["correct"]) for g in greedy_out])
        summary |= _completion_stats([greedy_out], prefix="greedy_")
        for record, g in zip(records, greedy_out):
            record |= {"greedy_answer": g["answer"], "greedy_reward": g["reward"], "greedy_correct": g["correct"]}
            if return_completions:
                record["greedy_completion"] = g["text"]
    summary["wall_time_s"] = time.perf_counter() - start
    return {"summary": summary, "records": records}


# ---------------------------------------------------------------------------------------------------------
# Saving, plotting, loading


def save_results(results: dict, path: str) -> str:
    """Write ``results`` (as :func:`evaluate` returns) to ``path`` as JSON; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)  # a run stopped mid-write leaves the previous file whole
    return path


def cached_result(path: str, key, make: Callable[[], dict]) -> dict:
    """``make()``'s JSON result, kept at ``path`` with ``key`` and reused while ``key`` matches; a file cut mid-write,
    damaged or made with another key is not trusted: made again (and said so)."""
    key = json.loads(json.dumps(key))
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key and "result" in saved:
            return saved["result"]
        logger.warning("%s is damaged or was made with other settings: made again", path)
    result = make()
    save_results({"key": key, "result": result}, path)
    return result


def plot_comparison(results_by_name: dict[str, dict], path: str, metric: str = "pass@1") -> str:
    """Bar chart of ``metric`` per model, with its stderr as error bars, saved as an image at ``path``.

    Each value is an :func:`evaluate` result (or its ``summary``); drawn with :mod:`.plotting` (no display needed).
    """
    if not results_by_name:
        raise ValueError("plot_comparison needs at least one result to plot.")
    summaries = {name: r.get("summary", r) for name, r in results_by_name.items()}
    for name, s in summaries.items():
        if metric not in s:
            available = sorted(k for k, v in s.items() if isinstance(v, float) and not k.endswith("_stderr"))
            raise ValueError(f"Result {name!r} has no metric {metric!r}; it has: {', '.join(available)}.")
    names = list(summaries)
    values = [summaries[n][metric] for n in names]
    errors = [summaries[n].get(f"{metric}_stderr", 0.0) for n in names]

    fig, ax = new_figure(max(4.0, 1.3 * len(names) + 1.5), 4.0)
    bars = ax.bar(range(len(names)), values, yerr=errors, capsize=5, color="#4C72B0", ecolor="black")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], label_type="center", color="white", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(metric)
    if all(0.0 <= v + e <= 1.0 for v, e in zip(values, errors)):
        ax.set_ylim(0.0, 1.05)
    problems = sorted({s.get("num_problems") for s in summaries.values()} - {None})
    ax.set_title(f"{metric} ± stderr over problems" + (f" (n={'/'.join(map(str, problems))})" if problems else ""))
    return save_figure(fig, path)


def check_model_path(model_path: str) -> None:
    """A model given as a local path must be a model folder (Hub ids like ``org/name`` pass through): a missing
    folder is named here, rather than by the Hub client's "Repo id must be in the form ..." message."""
    path = os.path.expanduser(str(model_path))
    looks_local = (
        os.path.isabs(path) or path.startswith(".") or path.count("/") > 1 or os.sep != "/" and os.sep in path
    )
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            hint = (
                " It is a PEFT adapter: pass it as --adapter."
                if os.path.exists(os.path.join(path, "adapter_config.json"))
                else ""
            )
            raise ValueError(f"Model folder {model_path!r} has no config.json, so it is not a saved model.{hint}")
    elif looks_local:
        raise FileNotFoundError(f"Model folder {model_path!r} does not exist. Pass a saved model folder or a Hub id.")


def check_adapter(adapter_path: str, model_path: str | None = None) -> None:
    """Check that ``adapter_path`` is a PEFT adapter that fits ``model_path``, without loading any weights.

    Raises one clear error when the folder is missing, is a full model rather than an adapter, has an unreadable
    ``adapter_config.json`` or no adapter weights, or when its LoRA targets or shapes do not fit the base model (built
    on the meta device from its config). Meant to run before any evaluation, so a bad adapter costs nothing.
    """
    from peft import PeftConfig

    name = str(adapter_path)
    if not os.path.isdir(name):
        if os.path.isabs(name) or name.startswith(".") or name.count("/") != 1:
            raise FileNotFoundError(f"Adapter folder {name!r} does not exist: pass the output_dir of a training run.")
        try:  # "org/name": an adapter on the Hub; only its config is fetched
            config = PeftConfig.from_pretrained(name)
        except Exception as err:
            raise ValueError(f"{name!r} is neither an adapter folder nor a loadable Hub adapter ({err}).") from err
        _check_adapter_fits(config, None, name, model_path)
        return
    if not os.path.exists(os.path.join(name, "adapter_config.json")):
        if os.path.exists(os.path.join(name, "config.json")):
            raise ValueError(
                f"{name!r} is a full model folder, not a PEFT adapter (no adapter_config.json): evaluate it as the "
                "model (--model), not as an --adapter."
            )
        checkpoints = sorted(n for n in os.listdir(name) if n.startswith("checkpoint-"))
        hint = f" Its checkpoints ({', '.join(checkpoints[-3:])}) hold adapters." if checkpoints else ""
        raise ValueError(f"{name!r} has no adapter_config.json, so it is not a PEFT adapter folder.{hint}")
    try:
        config = PeftConfig.from_pretrained(name)
    except Exception as err:
        raise ValueError(f"The adapter config {name}/adapter_config.json cannot be read ({err}).") from err
    weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if os.path.exists(os.path.join(name, f))]
    if not weights:
        raise ValueError(
            f"Adapter folder {name!r} has no adapter_model.safetensors (or .bin): the adapter was not fully saved."
        )
    _check_adapter_fits(config, os.path.join(name, weights[0]), name, model_path)


def _check_adapter_fits(config, weights_file: str | None, name: str, model_path: str | None) -> None:
    """The adapter's target modules and saved tensor shapes against the base model, built on the meta device."""
    if model_path is None:
        return
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        base_config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(base_config)
    except Exception:  # an architecture that cannot be built from its config here: loading will tell
        return
    base_name = getattr(config, "base_model_name_or_path", None)
    mismatch = f"Adapter {name!r} does not fit the model {model_path!r}" + (
        f" (it was trained on {base_name!r})" if base_name else ""
    )
    try:
        with warnings.catch_warnings():  # PEFT warns that the base differs from base_model_name_or_path
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(base, config)
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    except Exception as err:
        raise ValueError(f"{mismatch}: {err}") from err
    if weights_file is None or not weights_file.endswith(".safetensors"):
        return
    from safetensors import safe_open

    with safe_open(weights_file, framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    unknown = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if unknown or wrong:
        example = (
            f"{wrong[0]} is {saved[wrong[0]]} in the adapter but {expected[wrong[0]]} for this model"
            if wrong
            else f"{unknown[0]} has no place in this model"
        )
        raise ValueError(f"{mismatch}: {len(wrong) + len(unknown)} of its tensors do not fit ({example}).")


def load_model_for_eval(
    model_path: str,
    adapter_path: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load ``(model, tokenizer)`` for :func:`evaluate`: a local model folder, plus a PEFT adapter if given.

    ``device`` defaults to CUDA when available; ``dtype`` to bfloat16 on a GPU that supports it, else float32
    (CPU half precision is slow and inaccurate). The tokenizer comes from the adapter folder when it has one
    (trainers save it there, chat template included), else from the model folder. The paths are checked first
    (:func:`check_model_path`, :func:`check_adapter`).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(model_path)
    if adapter_path is not None:
        check_adapter(adapter_path, model_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; use a torch dtype name ('float32', 'bfloat16') or 'auto'.")
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, adapter_path)
    own_tokenizer = adapter_path is not None and os.path.exists(os.path.join(adapter_path, "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(adapter_path if own_tokenizer else model_path)
    model.eval()
    return model, tokenizer
