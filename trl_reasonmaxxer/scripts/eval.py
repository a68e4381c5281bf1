"""Evaluate a model, and adapters on top of it, on a math task: pass@k, maj@k and greedy accuracy with stderr.

```bash
trl-reasonmaxxer eval --num_problems 100 --adapter runs/demo/adapter
trl-reasonmaxxer eval --config examples/recipes/eval.yaml
```

Writes ``eval.json`` (every summary and per-problem record; each adapter's paired per-problem difference against the
model alone, pass@1 and greedy with 95% bootstrap CIs, under ``paired_vs_base``) and, with adapters, ``eval.png``
under ``output_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..tasks import PROMPT_TEMPLATES
from .parser import ScriptParser


@dataclass
class EvalConfig:
    """
    Arguments of ``trl-reasonmaxxer eval``.

    Parameters:
        model_name_or_path (`str`, *optional*, defaults to `"default"`):
            `"default"` (the embedded Qwen2.5-Coder-0.5B-Instruct) or a local model folder.
        adapter (`list[str]`, *optional*, defaults to `[]`):
            PEFT adapter folders; each is evaluated on top of the model, after the model alone.
        dataset_name (`str`, *optional*, defaults to `"svamp"`):
            A packaged task, or a local dataset (folder or json/jsonl/parquet/csv file) with `prompt` and `solution`
            columns.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            The split evaluated.
        num_problems (`int`, *optional*):
            A seeded subset of this many problems of a packaged task (the first rows of a local one); all when unset.
        num_samples (`int`, *optional*, defaults to `4`):
            Samples per problem at T=0.6, top-p 0.95 (pass@k for k = 1, 2, 4, ... up to it, and maj@k).
        greedy (`bool`, *optional*, defaults to `True`):
            Also one greedy completion per problem (greedy accuracy); `--no_greedy` skips it.
        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum tokens per completion; a completion without EOS by then is graded as it is.
        prompt_style (`str`, *optional*, defaults to `"paper"`):
            The paper's prompt, or `"brief"` (the prompt the demo and compare train with).
        seed (`int`, *optional*, defaults to `42`):
            Seed of the problem subset and of sampling.
        output_dir (`str`, *optional*, defaults to `"runs/eval"`):
            Where `eval.json` and `eval.png` go.
        use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample with llama.cpp on CPU (an adapter is applied as a GGUF LoRA): `true`, `false`, or unset for auto
            (no CUDA GPU, the `cpu` extra and the model's GGUF at hand). `eval.json` records it as `engine`.
        llama_cpp_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model as a GGUF file for llama.cpp (the embedded default model has its own).
    """

    model_name_or_path: str = field(
        default="default", metadata={"help": "'default' (the embedded 0.5B) or a local model folder."}
    )
    adapter: list[str] = field(
        default_factory=list,
        metadata={"help": "PEFT adapter folders, each evaluated on top of the model (after the model alone)."},
    )
    dataset_name: str = field(
        default="svamp", metadata={"help": "Packaged task, or local dataset with prompt and solution columns."}
    )
    dataset_test_split: str = field(default="test", metadata={"help": "The split evaluated."})
    num_problems: int | None = field(
        default=None, metadata={"help": "A seeded subset of this many problems (all when unset)."}
    )
    num_samples: int = field(default=4, metadata={"help": "Samples per problem at T=0.6, top-p 0.95."})
    greedy: bool = field(default=True, metadata={"help": "Also one greedy completion per problem."})
    max_completion_length: int = field(default=256, metadata={"help": "Maximum tokens per completion."})
    prompt_style: str = field(default="paper", metadata={"help": "paper or brief.", "choices": list(PROMPT_TEMPLATES)})
    seed: int = field(default=42, metadata={"help": "Seed of the problem subset and of sampling."})
    output_dir: str = field(default="runs/eval", metadata={"help": "Where eval.json and eval.png go."})
    use_llama_cpp: bool | None = field(
        default=None, metadata={"help": "Sample with llama.cpp on CPU: true, false; unset: auto."}
    )
    llama_cpp_model_path: str | None = field(
        default=None, metadata={"help": "GGUF file of the model for llama.cpp (the default model has its own)."}
    )


def make_parser(prog: str | None = None) -> ScriptParser:
    return ScriptParser(EvalConfig, prog=prog, description=__doc__.split("\n\n")[0])


def main(config: EvalConfig) -> dict:
    """Evaluate the model, then each adapter on top of it; print pass@1 and write the results."""
    from ..default_model import resolve_model
    from ..evaluation import (
        check_adapter,
        check_model_path,
        evaluate,
        load_model_for_eval,
        plot_comparison,
        save_results,
    )
    from ..stats import describe, paired_differences
    from ..tasks import load_prompts

    # every path is checked before the base evaluation runs, and results are written after each model
    model_path = resolve_model(config.model_name_or_path)
    check_model_path(model_path)
    for adapter in config.adapter:
        check_adapter(adapter, model_path)
    os.makedirs(config.output_dir, exist_ok=True)
    data = load_prompts(
        config.dataset_name,
        config.dataset_test_split,
        config.num_problems,
        seed=config.seed,
        prompt_style=config.prompt_style,
    )
    results = {}
    for adapter in [None, *config.adapter]:
        model, tokenizer = load_model_for_eval(model_path, adapter)
        name = adapter or "base"
        results[name] = evaluate(
            model,
            tokenizer,
            data,
            num_samples=config.num_samples,
            max_new_tokens=config.max_completion_length,
            greedy=config.greedy,
            seed=config.seed,
            desc=name,
            use_llama_cpp=config.use_llama_cpp,
            llama_cpp_model_path=config.llama_cpp_model_path,
        )
        s = results[name]["summary"]
        score = f": pass@1 {s['pass@1']:.3f} ± {s['pass@1_stderr']:.3f}" if "pass@1" in s else ""
        score += f", greedy {s['greedy_accuracy']:.3f}" if "greedy_accuracy" in s else ""
        print(f"{name}{score} ({s['engine']})", flush=True)
        if adapter is not None:  # the adapter against the model alone, problem by problem
            results[name]["paired_vs_base"] = paired_differences(results[name], results["base"])
            for metric, diff in results[name]["paired_vs_base"].items():
                print("  " + describe(diff, f"paired {metric} difference (adapter - base)"), flush=True)
        save_results(results, os.path.join(config.output_dir, "eval.json"))
    if len(results) > 1 and config.num_samples:
        plot_comparison(results, os.path.join(config.output_dir, "eval.png"))
    return results


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
