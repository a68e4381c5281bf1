"""Generation speed on CPU: transformers ``generate`` in float32 against the llama.cpp engine, on the same prompts.

Both engines sample the same SVAMP prompts (brief prompt style, chat template) at several batch sizes, in two shapes:
rollouts (8 samples per prompt) and evaluation (2 samples per prompt), up to 320 new tokens, stopping at EOS.
tokens/s = completion tokens over the whole call, prompt processing included. Also measured: a float32 GEMM
ceiling (GFLOP/s at the decode shape of batch 32, as tokens/s at the model's FLOP per token), and the fidelity of
llama.cpp: the next-token KL(float32 ‖ llama.cpp) teacher-forced on llama.cpp's own rollouts.

    python benchmarks/rollout_speed.py                                # embedded 0.5B, writes docs/results/rollout_speed.json
    python benchmarks/rollout_speed.py --batch-sizes 32 --waves 1     # the headline number only
    python benchmarks/rollout_speed.py --quick                        # tiny local model + tiny GGUF, seconds

Run it on a quiet machine: other busy processes slow both engines down (llama.cpp's threads wait for each other).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from trl_reasonmaxxer.llama_engine import LlamaEngine, max_threads
from trl_reasonmaxxer.rollouts import eos_token_ids, generate_completions, tokenize_prompt


HF, LLAMA = "hf-fp32", "llama.cpp"
SHAPES = {"rollout": "rollout_samples", "eval": "eval_samples"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (embedded 0.5B) or a local float32 model folder")
    parser.add_argument("--gguf", default=None, help="GGUF of --model (the embedded default finds its own)")
    parser.add_argument("--task", default="svamp")
    parser.add_argument("--batch-sizes", default="8,32,64", help="comma-separated sequences per batch")
    parser.add_argument("--waves", type=int, default=2, help="sequences per measurement = waves x batch size")
    parser.add_argument("--rollout-samples", type=int, default=8, help="samples per prompt, rollout shape")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per prompt, evaluation shape")
    parser.add_argument("--shapes", default="rollout,eval")
    parser.add_argument("--engines", default=f"{HF},{LLAMA}")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--kl-rollouts", type=int, default=8, help="llama.cpp rollouts teacher-forced for the KL")
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="tiny local model and GGUF: a self-check, not a number")
    parser.add_argument("--out", default=None, help="default: docs/results/rollout_speed.json (--quick: runs/...)")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.batch_sizes, ns.waves, ns.max_new_tokens, ns.kl_rollouts = "8,32", 1, 8, 2
    ns.out = ns.out or ("runs/rollout_speed_quick.json" if ns.quick else "docs/results/rollout_speed.json")
    ns.batch_sizes = [int(b) for b in ns.batch_sizes.split(",")]
    ns.shapes = ns.shapes.split(",")
    ns.engines = ns.engines.split(",")
    return ns


def setup(ns: argparse.Namespace, workdir: str):
    """(model, tokenizer, GGUF path, prompt ids): the tiny test model and its GGUF with --quick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ns.quick:
        from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer, save_tiny_gguf

        tokenizer = make_tiny_tokenizer()
        model = make_tiny_model(tokenizer)
        gguf = save_tiny_gguf(model, tokenizer, os.path.join(workdir, "tiny.gguf"))
        texts = [f"what is {i % 10} plus {(3 * i) % 10} ?" for i in range(64)]
        prompts = [tokenize_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
        return model.eval(), tokenizer, gguf, prompts
    from trl_reasonmaxxer.default_model import embedded_gguf, resolve_model
    from trl_reasonmaxxer.tasks import load_task

    path = resolve_model(ns.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gguf = ns.gguf or embedded_gguf(path)
    if gguf is None and LLAMA in ns.engines:
        raise SystemExit(f"No GGUF for {path}: pass --gguf <file>.")
    needed = max(math.ceil(b * ns.waves / min(ns.rollout_samples, ns.eval_samples)) for b in ns.batch_sizes)
    data = load_task(ns.task, "test", num_problems=needed, seed=0, prompt_style="brief")
    prompts = [tokenize_prompt(tokenizer, row["prompt"]) for row in data]
    return model, tokenizer, gguf, prompts


def flop_per_token(model) -> float:
    """Multiply-adds x 2 of one generated token: every weight matrix once (the tied head counted as the head)."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "norm" not in n)
    head = 0 if "lm_head.weight" in dict(model.named_parameters()) else cfg.vocab_size * cfg.hidden_size
    return 2.0 * (params + head)


def gemm_gflops(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """float32 matmul throughput at [m, k] @ [k, n], timed for about ``seconds``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * m * k * n * count / (time.perf_counter() - start) / 1e9


def run(engine_name: str, model, tokenizer, engine, prompts, samples: int, batch: int, ns) -> dict:
    kwargs = dict(
        num_generations=samples,
        max_new_tokens=ns.max_new_tokens,
        temperature=ns.temperature,
        top_p=ns.top_p,
        batch_size=batch,
        seed=0,
        disable_progress=True,
    )
    start = time.perf_counter()
    if engine_name == HF:
        groups = generate_completions(model, tokenizer, prompts, **kwargs)
    else:
        groups = engine.generate_completions(prompts, **kwargs)
    seconds = time.perf_counter() - start
    rows = [r for g in groups for r in g]
    tokens = sum(len(r["completion_ids"]) for r in rows)
    return {
        "engine": engine_name,
        "sequences": len(rows),
        "prompt_tokens": sum(len(p) for p in prompts) * samples,
        "completion_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "truncation_rate": sum(r["truncated"] for r in rows) / len(rows),
        "groups": groups,
    }


def teacher_forced_kl(model, engine, prompts, groups, limit: int) -> dict:
    """Mean and max next-token KL(float32 ‖ llama.cpp) in nats at T=1 over the completion tokens of up to ``limit``
    llama.cpp rollouts, and how often the two argmaxes agree."""
    pairs = [(p, r["completion_ids"]) for p, g in zip(prompts, groups) for r in g if r["completion_ids"]][:limit]
    kls, agree = [], []
    for prompt, completion in pairs:
        ours = torch.from_numpy(engine.next_token_logits(prompt, completion)).float()
        with torch.no_grad():
            ref = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
        ref, ours = ref[:, : ours.shape[-1]], ours[:, : ref.shape[-1]]  # GGUF vocabularies may be padded
        kl = (ref.softmax(-1) * (ref.log_softmax(-1) - ours.log_softmax(-1))).sum(-1)
        kls += kl.tolist()
        agree += (ref.argmax(-1) == ours.argmax(-1)).tolist()
    if not kls:
        return {"mean": None, "max": None, "top1_agreement": None, "tokens": 0}
    return {
        "mean": sum(kls) / len(kls),
        "max": max(kls),
        "top1_agreement": sum(agree) / len(agree),
        "tokens": len(kls),
    }


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv=None) -> dict:
    ns = parse_args(argv)
    load_start = os.getloadavg()
    threads = ns.threads or max_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        model, tokenizer, gguf, prompts = setup(ns, workdir)
        eos = eos_token_ids(tokenizer, model)
        engine = LlamaEngine(gguf, eos, n_threads=threads) if LLAMA in ns.engines else None
        if engine is not None:
            engine.check_tokenizer(tokenizer)
        results, kl_groups = [], None
        for shape in ns.shapes:
            samples = getattr(ns, SHAPES[shape])
            for batch in ns.batch_sizes:
                chosen = prompts[: max(1, math.ceil(batch * ns.waves / samples))]
                for name in ns.engines:
                    r = run(name, model, tokenizer, engine, chosen, samples, batch, ns)
                    groups = r.pop("groups")
                    if name == LLAMA and shape == "rollout" and (kl_groups is None or batch == 32):
                        kl_groups = (chosen, groups)
                    results.append({"shape": shape, "samples_per_prompt": samples, "batch_size": batch, **r})
                    print(
                        f"{shape:<8} batch {batch:>3} {name:<10} {r['sequences']:>4} seqs {r['completion_tokens']:>7} "
                        f"tokens {r['seconds']:>8.1f} s {r['tokens_per_s']:>7.1f} tok/s",
                        flush=True,
                    )
        kl = teacher_forced_kl(model, engine, *kl_groups, ns.kl_rollouts) if engine and kl_groups else None
        if engine is not None:
            engine.close()
    per_token = flop_per_token(model)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    decode_gflops = gemm_gflops(32, hidden, inter, seconds=0.5 if ns.quick else 3.0)
    ceiling = decode_gflops * 1e9 / per_token

    def at(shape: str, name: str, batch: int = 32) -> float | None:
        found = [r for r in results if r["shape"] == shape and r["engine"] == name and r["batch_size"] == batch]
        return found[0]["tokens_per_s"] if found else None

    headline = 32 if 32 in ns.batch_sizes else ns.batch_sizes[-1]
    engines = {name: at("rollout", name, headline) for name in ns.engines}
    ratio = lambda a, b: a / b if a and b else None
    report = {
        "model": "tiny test model (--quick)" if ns.quick else ns.model,
        "gguf": os.path.basename(gguf) if gguf else None,
        "settings": {k: v for k, v in vars(ns).items() if k != "out"},
        "threads": threads,
        "headline_batch_size": headline,
        "engines": engines,
        "speedup": ratio(engines.get(LLAMA), engines.get(HF)),
        "speedup_eval": ratio(at("eval", LLAMA, headline), at("eval", HF, headline)),
        "kl_per_token": kl,
        "flop_per_token": per_token,
        "gemm_gflops_decode_shape": {"shape": [32, hidden, inter], "gflops": decode_gflops},
        "ceiling_tokens_per_s": ceiling,
        "fraction_of_ceiling": {name: ratio(v, ceiling) for name, v in engines.items()},
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "commit": commit(),
        "device": "cpu",
        "results": results,
    }
    print()
    print(
        f"{'shape':<8} {'batch':>5} {'engine':<10} {'seqs':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'trunc':>6}"
    )
    for r in results:
        print(
            f"{r['shape']:<8} {r['batch_size']:>5} {r['engine']:<10} {r['sequences']:>5} {r['completion_tokens']:>7} "
            f"{r['seconds']:>8.1f} {r['tokens_per_s']:>7.1f} {r['truncation_rate']:>6.2f}"
        )
    print(
        f"float32 GEMM at decode shape 32x{hidden}x{inter}: {decode_gflops:.1f} GFLOP/s -> ceiling {ceiling:.1f} tok/s "
        f"at {per_token / 1e9:.3g} GFLOP/token"
    )
    if kl:
        print(
            f"KL(float32 || llama.cpp) per token: mean {kl['mean']:.2e}, max {kl['max']:.2e} nats, "
            f"top-1 agreement {kl['top1_agreement']:.3f} over {kl['tokens']} tokens"
        )
    print(f"load average: start {load_start[0]:.2f}, end {report['load_average']['end'][0]:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    with open(ns.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {ns.out}")
    speedup = report["speedup"]
    print(f"speedup vs hf-fp32 at batch {headline}: {'n/a' if speedup is None else f'{speedup:.2f}x'}")
    return report


if __name__ == "__main__":
    main()
