"""Build (or find) the embedded default model and measure what using it costs on this machine.

Reports the one-time conversion, the folder size, the reload time and greedy generation speed on a chat
prompt at batch 1 and 8, in float32 (the saved dtype) and, with ``--dtypes float32 bfloat16``, bfloat16 (cast
at load). Then it generates one full answer, so a broken conversion is visible: it should end in \\boxed{7}.

    python benchmarks/default_model.py --out runs/default_model.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_reasonmaxxer.default_model import MODEL_DIRNAME, cache_root, default_model_path


PROMPT = [
    {
        "role": "user",
        "content": "Solve the following math problem step by step. Put your final answer in \\boxed{}.\n\n"
        "Problem: A baker makes 12 muffins and sells 5. How many are left?",
    }
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $TRL_REASONMAXXER_CACHE or ~/.cache)"
    )
    parser.add_argument("--out", default="runs/default_model.json", help="where to write the JSON results")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the model even if it is cached")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per sequence")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--answer-tokens", type=int, default=256, help="token budget of the sanity answer")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    return parser.parse_args()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def generation_speed(model, tokenizer, batch_size: int, new_tokens: int) -> dict:
    """Greedy tokens/s over the whole ``generate`` call (prefill included), counting only tokens actually made."""
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer([text] * batch_size, return_tensors="pt", padding=True)
    with torch.inference_mode():
        output, seconds = timed(model.generate, **inputs, max_new_tokens=new_tokens, do_sample=False)
    completions = output[:, inputs["input_ids"].shape[1] :]
    made = int((completions != tokenizer.pad_token_id).sum())
    return {
        "batch_size": batch_size,
        "prompt_tokens": inputs["input_ids"].shape[1],
        "new_tokens": made,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(made / seconds, 1),
        "text": tokenizer.decode(completions[0], skip_special_tokens=True),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    was_cached = (cache_root(args.cache_dir) / MODEL_DIRNAME).is_dir() and not args.rebuild
    path, build_s = timed(default_model_path, args.cache_dir, force=args.rebuild)
    tokenizer, tokenizer_s = timed(AutoTokenizer.from_pretrained, path, padding_side="left")
    results = {
        "path": path,
        "threads": args.threads,
        "conversion_s": None if was_cached else round(build_s, 1),
        "folder_bytes": folder_bytes(path),
        "tokenizer_load_s": round(tokenizer_s, 2),
        "eos_token_id": None,
        "runs": [],
    }
    for dtype in args.dtypes:
        model, load_s = timed(AutoModelForCausalLM.from_pretrained, path, dtype=getattr(torch, dtype))
        results["eos_token_id"] = model.generation_config.eos_token_id
        results[f"reload_{dtype}_s"] = round(load_s, 2)
        for batch_size in args.batch_sizes:
            run = generation_speed(model, tokenizer, batch_size, args.new_tokens)
            results["runs"].append({"dtype": dtype, **run})
        if "answer" not in results:
            answer = generation_speed(model, tokenizer, 1, args.answer_tokens)
            results["answer"] = {"dtype": dtype, **answer, "boxed_7": "\\boxed{7}" in answer["text"]}
        del model
    report(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def report(results: dict) -> None:
    conversion = "cached" if results["conversion_s"] is None else f"{results['conversion_s']} s"
    print(f"model folder   {results['path']} ({results['folder_bytes'] / 1e9:.2f} GB)")
    print(f"conversion     {conversion}")
    print(f"tokenizer load {results['tokenizer_load_s']} s; eos ids {results['eos_token_id']}")
    for key in [k for k in results if k.startswith("reload_")]:
        print(f"{key:<14} {results[key]} s")
    print(f"\n{'dtype':<9} {'batch':>5} {'prompt':>6} {'new tok':>7} {'seconds':>8} {'tok/s':>7}")
    for run in results["runs"]:
        print(
            f"{run['dtype']:<9} {run['batch_size']:>5} {run['prompt_tokens']:>6} {run['new_tokens']:>7} "
            f"{run['seconds']:>8} {run['tokens_per_s']:>7}"
        )
    answer = results["answer"]
    print(f"\nanswer ({answer['dtype']}, {answer['new_tokens']} tokens, {answer['tokens_per_s']} tok/s):")
    print(f"{answer['text']}\n\\boxed{{7}} found: {answer['boxed_7']}")


if __name__ == "__main__":
    main()
