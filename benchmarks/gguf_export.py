"""GGUF export of a LoRA on the embedded default model: time, size, and llama.cpp vs transformers (docs/export.md).

Makes a random r=32 LoRA on q/k/v/o (alpha 64, ``lora_B`` ~ N(0, 0.02); or uses ``--adapter``), converts it with
``peft_to_gguf_lora`` and, with ``--merged f16 q8_0``, ``merge_to_gguf``. When llama-cpp-python is installed it then
compares, teacher-forced on a few chat prompts: transformers (float32 + PEFT) vs llama.cpp (the Q4 base GGUF + the
GGUF LoRA, and the merged files): KL per token, top-1 agreement, and the adapter's own logit change in both.

    python benchmarks/gguf_export.py --out runs/gguf_export --merged f16 q8_0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from trl_reasonmaxxer.default_model import default_model_path
from trl_reasonmaxxer.gguf_export import find_base_gguf, lora_base_problems, merge_to_gguf, peft_to_gguf_lora


CONVERSATIONS = [
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "3 + 5 = 8. The answer is 8."),
    ("Write a Python function that returns the square of a number.", "def square(x):\n    return x * x"),
    (
        "A train travels 60 km in 1.5 hours. What is its average speed?",
        "Speed = 60 / 1.5 = 40 km/h. The answer is 40.",
    ),
    ("What is 12 times 7?", "12 times 7 is 84."),
]


def make_adapter(folder: str, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # lora_A keeps PEFT's init; a zero lora_B would be a no-op
    peft_model.save_pretrained(str(out))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def agreement(p_logits: list, q_logits: list) -> dict:
    """KL(p ‖ q) per token (mean, max) and top-1 agreement over all positions of all prompts."""
    kls, same = [], []
    for a, b in zip(p_logits, q_logits):
        lp, lq = log_softmax(a), log_softmax(b)
        kls.append((np.exp(lp) * (lp - lq)).sum(-1))
        same.append(a.argmax(-1) == b.argmax(-1))
    kl = np.concatenate(kls)
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "top1": float(np.concatenate(same).mean())}


def compare_with_llama_cpp(folder: str, adapter: Path, base_gguf: str, lora: str, merged: dict, threads: int) -> dict:
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    seqs = []
    for question, answer in CONVERSATIONS:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        seqs.append(list(ids))

    def hf(model) -> list:
        with torch.no_grad():
            return [model(torch.tensor([s])).logits[0].float().numpy() for s in seqs]

    def cpp(path: str, lora_path: str | None = None) -> list:
        kwargs = {"lora_path": lora_path} if lora_path else {}
        llm = Llama(path, n_ctx=256, n_batch=256, logits_all=True, n_threads=threads, verbose=False, **kwargs)
        out = []
        for s in seqs:
            llm.reset()
            llm.eval(s)
            out.append(np.array(llm.scores[: len(s)], dtype=np.float32))
        llm.close()
        return out

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf_base = hf(model)
    hf_lora = hf(PeftModel.from_pretrained(model, str(adapter)))
    del model
    cpp_base, cpp_lora = cpp(base_gguf), cpp(base_gguf, lora)
    d_hf = np.concatenate([(a - b).ravel() for a, b in zip(hf_lora, hf_base)])
    d_cpp = np.concatenate([(a - b).ravel() for a, b in zip(cpp_lora, cpp_base)])
    result = {
        "tokens": [len(s) for s in seqs],
        "adapter_effect_hf": agreement(hf_base, hf_lora),
        "hf_base_vs_cpp_q4_base": agreement(hf_base, cpp_base),
        "hf_lora_vs_cpp_q4_base_plus_lora": agreement(hf_lora, cpp_lora),
        "adapter_change_cosine": float(d_hf @ d_cpp / np.linalg.norm(d_hf) / np.linalg.norm(d_cpp)),
        "adapter_change_norm_ratio": float(np.linalg.norm(d_cpp) / np.linalg.norm(d_hf)),
    }
    for dtype, path in merged.items():
        result[f"hf_lora_vs_cpp_merged_{dtype}"] = agreement(hf_lora, cpp(path))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gguf_export")
    parser.add_argument("--adapter", default=None, help="An adapter trained on the default model (default: random).")
    parser.add_argument("--merged", nargs="*", default=[], choices=["f16", "q8_0", "f32"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = default_model_path()
    adapter = Path(args.adapter) if args.adapter else make_adapter(folder, out / "adapter-r32")
    report: dict = {"adapter": str(adapter)}
    start = time.perf_counter()
    lora = peft_to_gguf_lora(adapter, out / "lora.gguf")
    report["lora_seconds"] = time.perf_counter() - start
    report["lora_mb"] = os.path.getsize(lora) / 1e6
    base_gguf = find_base_gguf("default")
    report["lora_fits_base"] = not lora_base_problems(lora, base_gguf)
    merged = {}
    for dtype in args.merged:
        start = time.perf_counter()
        merged[dtype] = merge_to_gguf("default", adapter, out / f"merged-{dtype}.gguf", dtype=dtype)
        report[f"merged_{dtype}_seconds"] = time.perf_counter() - start
        report[f"merged_{dtype}_mb"] = os.path.getsize(merged[dtype]) / 1e6
    if importlib.util.find_spec("llama_cpp") is not None:
        report["llama_cpp"] = compare_with_llama_cpp(folder, adapter, base_gguf, lora, merged, args.threads)
    else:
        report["llama_cpp"] = "llama_cpp (llama-cpp-python) is not installed: comparison skipped"
    text = json.dumps(report, indent=2)
    (out / "gguf_export.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
