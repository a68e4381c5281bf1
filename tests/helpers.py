"""Shared helpers for the core test-suite: tiny configs, hand-made pools, reward functions, call counters, and a
local stand-in for the Hub API."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from huggingface_hub import HfApi, RepoUrl
from huggingface_hub.utils import filter_repo_objects

from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer


# Settings that keep every CPU run to a fraction of a second.
FAST = dict(
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    warmup_steps=0,
    logging_steps=1,
    disable_tqdm=True,
    seed=0,
)


def tiny_config(output_dir, **overrides) -> ReasonMaxxerConfig:
    """A ReasonMaxxerConfig for the tiny model: 4 generations, 3 new tokens, 2 steps, nothing saved."""
    kwargs = dict(
        FAST,
        output_dir=str(output_dir),
        num_generations=4,
        max_completion_length=3,
        temperature=1.0,
        max_steps=2,
        learning_rate=1e-3,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        rollout_chunk_size=1,
        rollout_batch_size=8,
        scoring_batch_size=8,
        fork_fraction=0.5,
    )
    kwargs.update(overrides)
    return ReasonMaxxerConfig(**kwargs)


def chat_prompts(n: int = 3) -> Dataset:
    """``n`` conversational prompts written in the tiny tokenizer's vocabulary, with an ``answer`` column."""
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"what is {i} plus {i} ?"}] for i in range(n)],
            "answer": [str(2 * i) for i in range(n)],
        }
    )


def alternating_reward(completions, **kwargs):
    """1, 0, 1, 0 ... in call order: with an even ``num_generations`` every prompt is a 50% mixed group,
    whatever the model samples."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def make_trainer(model_dir, output_dir, dataset=None, reward=alternating_reward, **config) -> ReasonMaxxerTrainer:
    """A trainer on ``chat_prompts(3)`` (or ``dataset``) with ``alternating_reward`` and ``tiny_config(**config)``."""
    return ReasonMaxxerTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=tiny_config(output_dir, **config),
        train_dataset=chat_prompts(3) if dataset is None else dataset,
    )


def make_pool(groups, prompt_len=3, vocab: int = 40, seed: int = 0, scored: bool = True) -> Dataset:
    """A hand-made pool (the ``rollout_dataset`` format) from ``groups``.

    ``groups`` maps a prompt index to a list of rollouts ``(reward, entropy_row)`` or ``(reward, entropy_row,
    truncated)``; an int instead of an entropy row gives only the length (for ``scored=False``). Completion ids are
    random tokens (ids 5.. avoid the special tokens); ``prompt_len`` is an int or ``{prompt index: length}``.
    With ``scored=True`` the pool carries ``entropy`` and a fixed ``logps`` of ``-1.0`` per token, so the trainer
    skips scoring; with ``scored=False`` the trainer scores it with the model.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_index, rollouts in groups.items():
        n_prompt = prompt_len[prompt_index] if isinstance(prompt_len, dict) else prompt_len
        prompt_ids = torch.randint(5, vocab, (n_prompt,), generator=gen).tolist()
        for reward, entropy, *truncated in rollouts:
            length = entropy if isinstance(entropy, int) else len(entropy)
            row = {
                "prompt_index": prompt_index,
                "prompt_ids": prompt_ids,
                "completion_ids": torch.randint(5, vocab, (length,), generator=gen).tolist(),
                "truncated": bool(truncated[0]) if truncated else False,
                "reward": None if reward is None else float(reward),
            }
            if scored:
                row["entropy"] = [float(h) for h in entropy]
                row["logps"] = [-1.0] * length
            rows.append(row)
    return Dataset.from_list(rows)


def softcapped_model(tokenizer, softcap: float = 0.5):
    """A tiny random Gemma-2, whose forward soft-caps the LM head's logits (``softcap · tanh(logits / softcap)``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "gemma2",
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=softcap,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(config)


class SimulatedCrash(RuntimeError):
    """Raised by CallCounter to simulate a killed run."""


class CallCounter:
    """Wraps a function, counts its calls, and optionally raises on the ``fail_on``-th call (1-based)."""

    def __init__(self, func, fail_on: int | None = None):
        self.func = func
        self.fail_on = fail_on
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise SimulatedCrash("simulated crash during generation")
        return self.func(*args, **kwargs)


def pool_key(dataset) -> list[tuple]:
    """The generated content of a pool, row by row, for comparing two pools."""
    return [
        (r["prompt_index"], tuple(r["prompt_ids"]), tuple(r["completion_ids"]), bool(r["truncated"])) for r in dataset
    ]


def is_close_list(a, b, tol=1e-5) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) for x, y in zip(a, b))


class LocalHub:
    """Stands in for the two ``HfApi`` calls Trainer makes (``create_repo``, ``upload_folder``): repos are folders
    under ``root``; ``fail`` makes the next calls raise as an unreachable Hub would."""

    def __init__(self, root: Path):
        self.root = root
        self.fail = False
        self.uploads = 0

    def create_repo(self, api, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        if self.fail:
            raise ConnectionError("Hub unreachable (stand-in)")
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        if self.fail:
            raise ConnectionError("Hub unreachable (stand-in)")
        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (self.root / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder_path) / name, self.root / repo_id / name)
        self.uploads += 1
        return f"https://huggingface.co/{repo_id}/commit/local"

    def install(self, monkeypatch):
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *a, **k: self.create_repo(api, *a, **k))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, *a, **k: self.upload_folder(api, *a, **k))
        return self


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as the module ``name``."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in the script looks its module up there
    spec.loader.exec_module(module)
    return module
