"""GPU smoke check: ReasonMaxxer end to end in bf16 on CUDA, its chunked paths against full logits, and the peak
memory of one training step against a plain LoRA SFT step. Minutes on any CUDA GPU; no Hub, no data download.

    python benchmarks/gpu_smoke.py                         # CUDA; writes docs/results/gpu_smoke.json
    python benchmarks/gpu_smoke.py --device cpu            # a CPU self-check of the script (seconds, tiny shapes)
    make gpu-check

Checks, in order (each prints one row of the table; the script exits 1 if one fails):

1. **Offline phase + training**, bf16 weights (``dtype=bfloat16``) and ``bf16=True`` on CUDA: the tiny word-level
   Llama of ``trl_reasonmaxxer.testing`` (saved to a temporary folder, a few chat prompts, a reward that makes every
   prompt a 50% group) goes through rollouts, rewards, selection, scoring, gating and ``max_steps`` training steps.
   Passes when every step's loss is finite and the LoRA weights moved.
2. **Scoring vs full logits**: ``scoring.score_rollouts`` (final hidden states, LM head in chunks) against the
   model's own ``[B, T, V]`` logits → fp32 ``log_softmax`` at the shifted positions, on a random Qwen2-shaped model
   (Qwen2.5's 151,936-token vocabulary, a small body). Tolerances, max absolute difference of entropy (nats) and
   log-prob: 1e-4 with fp32 weights; 5e-2 with bf16 weights (bf16 logits carry ~3 significant digits, and the
   chunked GEMM may round a logit differently from the full one by one bf16 ulp).
3. **Chunked loss vs full logits**: ``losses.chunked_logps_and_kl`` (checkpointed chunks) against
   ``head(hidden).float().log_softmax`` + ``losses.token_kl`` on the same hidden states: values (max absolute
   difference of log-probs and KL) and the gradient with respect to the policy hidden states (relative L2 error).
   Tolerances: 1e-4 / 1e-4 with fp32 weights; 5e-2 / 2e-2 with bf16 weights.
4. **Peak memory of one step** (``torch.cuda.max_memory_allocated``; on CPU the RSS high-water mark, which only
   proves the code runs): one ReasonMaxxer step (``compute_loss``: LoRA policy forward + adapter-disabled reference
   forward, fork loss + KL anchor; backward; AdamW) against one plain LoRA SFT step (``model(labels=...).loss``, full
   logits) on the same pair of ``--length``-token sequences, bf16 weights, each measured after a warm-up step.
   Reported, not asserted: the ratio (``docs/benchmarks.md`` targets ≤ 1.15× on the peak).

Requirements: ``torch`` (CUDA build), ``transformers``, ``accelerate``, ``peft``, ``trl``, ``datasets`` and this
package (``pip install -e .``). ``trl`` is needed: ``import trl_reasonmaxxer`` imports it (the trainer subclasses
TRL's base trainer, the collator and scoring use ``trl.trainer.utils``), and ``datasets`` comes with ``trl``. No
vLLM, bitsandbytes or Hub access. Not collected by pytest (``testpaths = ["tests"]``) and not run by CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import MODELS, training_step  # noqa: E402  (the memory benchmark's model and step, shared)


DEFAULT_OUT = "docs/results/gpu_smoke.json"
CPU_OUT = "runs/gpu_smoke_cpu.json"  # a CPU self-check must not overwrite the GPU record
# A random Qwen2-shaped model: Qwen2.5's vocabulary (what makes full logits large), a small body; the memory
# benchmark's shape, so the two report the same model
QWEN2_SHAPE = MODELS["qwen2-mid"]
# The CPU self-check: the same code on shapes that take seconds
CPU_SHAPE = dict(QWEN2_SHAPE, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TOLERANCES = {  # (values, gradient relative error) per weight dtype
    "float32": {"scoring": 1e-4, "loss_values": 1e-4, "loss_grad": 1e-4},
    "bfloat16": {"scoring": 5e-2, "loss_values": 5e-2, "loss_grad": 2e-2},
}


def half_and_half_reward(completions, **kwargs):
    """1, 0, 1, 0 ... in call order: with an even ``num_generations`` every prompt is a 50% group."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def qwen2_model(shape: dict, dtype, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **shape))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_sequences(vocab: int, shapes, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(5, vocab, (p,), generator=g).tolist(), torch.randint(5, vocab, (c,), generator=g).tolist())
        for p, c in shapes
    ]


# --------------------------------------------------------------------------------------------- 1. end to end


def check_end_to_end(device: str, steps: int) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback

    from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import save_tiny_model

    cuda = device == "cuda"
    work = tempfile.mkdtemp(prefix="gpu-smoke-")
    model_dir = save_tiny_model(os.path.join(work, "model"), hidden_size=64)
    prompts = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"what is {i} plus {i} ?"}] for i in range(4)]}
    )
    args = ReasonMaxxerConfig(
        output_dir=os.path.join(work, "run"),
        use_cpu=not cuda,
        bf16=cuda,
        model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"},
        num_generations=4,
        max_completion_length=16,
        temperature=1.0,
        max_steps=steps,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_steps=0,
        fork_fraction=0.2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = ReasonMaxxerTrainer(model_dir, reward_funcs=half_and_half_reward, args=args, train_dataset=prompts)
    trainer.remove_callback(PrinterCallback)  # the table below is the output
    lora = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    moved = max(
        (p.detach().float().cpu() - lora[n].cpu()).abs().max().item()
        for n, p in trainer.model.named_parameters()
        if n in lora
    )
    base_dtype = next(p.dtype for n, p in trainer.model.named_parameters() if "lora_" not in n)
    stats = trainer.pool_stats
    ok = len(losses) == steps and all(math.isfinite(v) for v in losses) and moved > 0
    return {
        "name": "offline phase + training",
        "ok": ok,
        "value": f"{steps} steps, losses {', '.join(f'{v:.3g}' for v in losses)}",
        "tolerance": "finite losses, LoRA moved",
        "details": {
            "base_dtype": str(base_dtype),
            "bf16_autocast": args.bf16,
            "losses": losses,
            "max_lora_change": moved,
            "seconds": seconds,
            "pool": {k: v for k, v in stats.items() if isinstance(v, (int, float))},
        },
    }


# ------------------------------------------------------------------------------------- 2. scoring vs logits


def check_scoring(device: str, shape: dict, dtype_name: str) -> dict:
    import torch

    from trl_reasonmaxxer.scoring import score_rollouts

    model = qwen2_model(shape, getattr(torch, dtype_name), device)
    seqs = random_sequences(shape["vocab_size"], [(12, 40), (30, 7), (5, 64), (20, 20)])
    scored = score_rollouts(model, seqs, pad_token_id=0, batch_size=4, disable_progress=True, chunk_size=16)
    worst_h = worst_lp = 0.0
    for (prompt, completion), (entropy, logps) in zip(seqs, scored, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion], device=device)).logits[0].float()
        logp = logits.log_softmax(-1)[len(prompt) - 1 : -1]  # position P + j - 1 predicts completion token j
        ref_h = -(logp.exp() * logp).sum(-1)
        ref_lp = logp.gather(-1, torch.tensor(completion, device=device)[:, None])[:, 0]
        worst_h = max(worst_h, (ref_h.cpu() - torch.tensor(entropy)).abs().max().item())
        worst_lp = max(worst_lp, (ref_lp.cpu() - torch.tensor(logps)).abs().max().item())
    tol = TOLERANCES[dtype_name]["scoring"]
    return {
        "name": f"scoring vs full logits ({dtype_name})",
        "ok": worst_h <= tol and worst_lp <= tol,
        "value": f"max |dH| {worst_h:.2e}, max |dlogp| {worst_lp:.2e}",
        "tolerance": f"<= {tol:g}",
        "details": {"max_abs_entropy": worst_h, "max_abs_logp": worst_lp},
    }


# ---------------------------------------------------------------------------------- 3. chunked loss vs logits


def check_chunked_loss(device: str, shape: dict, dtype_name: str) -> dict:
    import torch

    from trl_reasonmaxxer.losses import chunked_logps_and_kl, token_kl
    from trl_reasonmaxxer.scoring import final_hidden_states

    dtype = getattr(torch, dtype_name)
    model = qwen2_model(shape, dtype, device)
    head = model.get_output_embeddings()
    ids = torch.tensor([p + c for p, c in random_sequences(shape["vocab_size"], [(16, 48), (16, 48)])], device=device)
    with torch.no_grad():
        hidden = final_hidden_states(model, ids, torch.ones_like(ids))[0][:, :-1]
        g = torch.Generator(device=device).manual_seed(1)
        ref_hidden = hidden + 0.5 * hidden.std() * torch.randn(hidden.shape, generator=g, device=device, dtype=dtype)
    targets = ids[:, 1:]

    def run(chunked: bool):
        h = hidden.detach().clone().requires_grad_(True)
        if chunked:
            logps, kl = chunked_logps_and_kl(h, head, targets, ref_hidden, head, chunk_size=24)
        else:
            logp = head(h).float().log_softmax(-1)
            logps = logp.gather(-1, targets[..., None])[..., 0]
            with torch.no_grad():
                ref_logits = head(ref_hidden)
            kl = token_kl(head(h), ref_logits)
        (logps.sum() - 0.2 * kl.sum()).backward()
        return logps.detach().float(), kl.detach().float(), h.grad.float()

    lp_c, kl_c, grad_c = run(True)
    lp_f, kl_f, grad_f = run(False)
    values = max((lp_c - lp_f).abs().max().item(), (kl_c - kl_f).abs().max().item())
    grad = ((grad_c - grad_f).norm() / grad_f.norm().clamp(min=1e-30)).item()
    tol = TOLERANCES[dtype_name]
    return {
        "name": f"chunked loss vs full logits ({dtype_name})",
        "ok": values <= tol["loss_values"] and grad <= tol["loss_grad"],
        "value": f"max |d(logp, KL)| {values:.2e}, grad rel err {grad:.2e}",
        "tolerance": f"<= {tol['loss_values']:g} / {tol['loss_grad']:g}",
        "details": {"max_abs_values": values, "grad_rel_err": grad},
    }


# --------------------------------------------------------------------------------------------- 4. memory


def check_memory(device: str, shape: dict, length: int) -> dict:
    import torch

    from trl_reasonmaxxer.benchmarking.ledger import peak_memory, reset_peak_memory

    cuda = device == "cuda"
    result = {}
    for kind in ("sft", "reasonmaxxer"):
        # a fresh model per kind: each step wraps its model in its own LoRA; the previous one is freed below
        step = training_step(
            kind, qwen2_model(shape, torch.bfloat16 if cuda else torch.float32, device), 0, length, device
        )
        step()  # warm-up: AdamW state, kernels' workspaces
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
        else:
            before = 0
        reset_peak_memory(device)
        step()
        if cuda:
            torch.cuda.synchronize()
        peak, memory_kind = peak_memory(device)
        result[kind] = {"peak_bytes": peak, "delta_bytes": peak - before, "memory_kind": memory_kind}
        del step
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    ratio = result["reasonmaxxer"]["peak_bytes"] / max(result["sft"]["peak_bytes"], 1)
    mib = 2**20
    return {
        "name": f"peak memory, one step, {length} tokens x 2",
        "ok": True,  # reported, not asserted
        "value": (
            f"ReasonMaxxer {result['reasonmaxxer']['peak_bytes'] / mib:.0f} MiB vs SFT "
            f"{result['sft']['peak_bytes'] / mib:.0f} MiB ({ratio:.2f}x)"
        ),
        "tolerance": "reported (target <= 1.15x)",
        "details": result | {"ratio_peak": ratio, "length": length, "shape": shape},
    }


# ------------------------------------------------------------------------------------------------ main


def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    env = {"python": platform.python_version(), "device": device}
    for name in ("torch", "transformers", "accelerate", "peft", "trl", "trl-reasonmaxxer"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    if device == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    return env


def table(checks: list[dict]) -> str:
    rows = [("check", "result", "tolerance", "ok")] + [
        (c["name"], c["value"], c["tolerance"], "PASS" if c["ok"] else "FAIL") for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a quick self-check")
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT}; with --device cpu {CPU_OUT})")
    parser.add_argument("--steps", type=int, default=3, help="training steps of the end-to-end check")
    parser.add_argument("--length", type=int, default=None, help="tokens per sequence of the memory check")
    ns = parser.parse_args(argv)

    import torch

    if ns.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_smoke: CUDA is not available here (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}), so there is nothing to check on a "
            "GPU. Run it on a machine with a CUDA GPU and a CUDA build of torch, or run `python "
            "benchmarks/gpu_smoke.py --device cpu` for a CPU self-check of the script.",
            file=sys.stderr,
        )
        return 2
    cuda = ns.device == "cuda"
    if cuda and not torch.cuda.is_bf16_supported():
        print("gpu_smoke: this GPU does not support bf16 (pre-Ampere); the checks need it.", file=sys.stderr)
        return 2
    out = ns.out or (DEFAULT_OUT if cuda else CPU_OUT)
    shape = QWEN2_SHAPE if cuda else CPU_SHAPE
    length = ns.length or (1024 if cuda else 64)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)) if cuda else 1)

    checks = [check_end_to_end(ns.device, ns.steps)]
    for dtype_name in ("float32", "bfloat16"):
        checks.append(check_scoring(ns.device, shape, dtype_name))
        checks.append(check_chunked_loss(ns.device, shape, dtype_name))
    checks.append(check_memory(ns.device, shape, length))

    print(table(checks))
    record = {"environment": environment(ns.device), "passed": all(c["ok"] for c in checks), "checks": checks}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    print(f"{'PASSED' if record['passed'] else 'FAILED'}; written to {out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
