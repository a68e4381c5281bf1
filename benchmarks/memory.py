"""Peak memory of ReasonMaxxer's pieces against their plain counterparts, on the same inputs.

1. One training step: ``ReasonMaxxerTrainer.compute_loss`` (LoRA policy forward + adapter-disabled reference
   forward, fork loss + KL anchor) + backward + AdamW step, vs a plain LoRA SFT step (``model(labels=...).loss``)
   on the same batch (one pair = 2 sequences). Target: ≤ 1.15×.
2. Entropy scoring of one long sequence: ``scoring.score_rollouts`` (final hidden states, LM head in chunks of
   tokens) vs a naive pass (full fp32 logits → ``log_softmax`` → entropy), over several sequence lengths. Target:
   flat in length.

Each measurement runs in a fresh subprocess, so nothing from an earlier one (allocator caches, a larger earlier
peak) leaks into it. On CPU the peak is the kernel's RSS high-water mark (VmHWM, reset through
``/proc/self/clear_refs`` after the model is built); tracemalloc would miss torch's allocations and psutil
would need polling. On a GPU it is ``torch.cuda.max_memory_allocated``. Reported: the peak above the memory
held before the step (``delta``, what the step itself needs) and the absolute peak.

    python benchmarks/memory.py --quick                      # tiny model, ~2 minutes (8 fresh processes)
    python benchmarks/memory.py --model qwen2-mid --out runs/memory-qwen2-mid
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# A random-init Qwen2-like model: Qwen2.5-0.5B's vocabulary (151,936, what makes full logits large) and
# tokenizer-free inputs, with a smaller body so every measurement takes seconds.
MODELS = {
    "tiny": None,  # trl_reasonmaxxer.testing's word-level Llama (vocabulary of ~45)
    "qwen2-mid": dict(
        vocab_size=151936,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}


def build_model(name: str):
    """``(model, pad_token_id)`` for a name of :data:`MODELS` or a local model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if name == "tiny":
        from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer

        tok = make_tiny_tokenizer()
        return make_tiny_model(tok, hidden_size=64), tok.pad_token_id
    if name in MODELS:
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **MODELS[name])), 0
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    return model, model.config.pad_token_id or 0


def current_memory(device: str) -> int:
    """Memory held now: VmRSS on CPU, allocated bytes on a GPU."""
    import torch

    if device != "cpu":
        return torch.cuda.memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _random_ids(model, length: int, seed: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.config.vocab_size, (length,), generator=g).tolist()


def training_step(kind: str, model, pad_id: int, length: int, device: str):
    """Returns a closure running one optimiser step of ``kind`` ("reasonmaxxer" or "sft") on a pair of sequences
    of ``length`` tokens (a quarter prompt, the rest completion, 3% forks). ``gpu_smoke.py`` measures with it too."""
    import torch
    from datasets import Dataset

    from trl_reasonmaxxer import DataCollatorForForkPairs, ReasonMaxxerConfig, ReasonMaxxerTrainer
    from trl_reasonmaxxer.config import default_lora_config
    from trl_reasonmaxxer.testing import make_tiny_tokenizer

    prompt_len = length // 4
    comp_len = length - prompt_len
    prompt = _random_ids(model, prompt_len, 0)
    pair = {"prompt_ids": prompt}
    for side, adv, seed in (("chosen", 1.0, 1), ("rejected", -1.0, 2)):
        fork = [int(i % 33 == 0) for i in range(comp_len)]
        pair |= {
            f"{side}_completion_ids": _random_ids(model, comp_len, seed),
            f"{side}_fork_mask": fork,
            f"{side}_logps": [-1.0] * comp_len,
            f"{side}_advantage": adv,
            f"{side}_weight": 1.0,
        }
    batch = {k: v.to(device) for k, v in DataCollatorForForkPairs(pad_id)([pair]).items()}
    out_dir = tempfile.mkdtemp(prefix="memory-bench-")
    args = ReasonMaxxerConfig(
        output_dir=out_dir,
        use_cpu=device == "cpu",
        bf16=False,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    pool = Dataset.from_list(
        [{"prompt_index": 0, "prompt_ids": prompt, "completion_ids": [5], "truncated": False, "reward": 1.0}]
    )
    # the tokenizer is only asked for its pad token here: the inputs are token ids
    trainer = ReasonMaxxerTrainer(
        model=model.to(device),
        args=args,
        rollout_dataset=pool,
        processing_class=make_tiny_tokenizer(),
        peft_config=default_lora_config(model),
    )
    peft_model = trainer.model
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def step():
        if kind == "reasonmaxxer":
            loss = trainer.compute_loss(peft_model, batch)
        else:
            loss = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _scoring(kind: str, model, pad_id: int, length: int, device: str):
    """Returns a closure scoring one sequence of ``length`` tokens (16 prompt tokens): chunked or naive."""
    import torch

    from trl_reasonmaxxer.scoring import score_rollouts

    model.to(device).eval()
    ids = _random_ids(model, length, 0)
    if kind == "chunked":
        return lambda: score_rollouts(model, [(ids[:16], ids[16:])], pad_id, batch_size=1, disable_progress=True)

    @torch.no_grad()
    def naive():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return entropy[0, 15:-1].tolist(), logp[0, 15:-1].gather(-1, torch.tensor(ids[16:])[:, None]).tolist()

    return naive


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: build, settle, reset the peak, run once, read the peak."""
    import torch

    from trl_reasonmaxxer.benchmarking.ledger import peak_memory, reset_peak_memory

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() and not spec["cpu"] else "cpu"
    model, pad_id = build_model(spec["model"])
    make = training_step if spec["bench"] == "train_step" else _scoring
    run = make(spec["kind"], model, pad_id, spec["length"], device)
    before = current_memory(device)
    if not reset_peak_memory(device):
        raise RuntimeError("Cannot reset the peak RSS (/proc/self/clear_refs): run this benchmark on Linux.")
    run()
    peak, kind = peak_memory(device)
    return spec | {
        "device": device,
        "memory_kind": kind,
        "before_bytes": before,
        "peak_bytes": peak,
        "delta_bytes": peak - before,
    }


def measure(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    mib = 2**20
    lines = [
        f"{'bench':<11}{'kind':<14}{'length':>7}{'delta MiB':>11}{'peak MiB':>10}{'ratio (delta)':>15}"
        f"{'ratio (peak)':>14}"
    ]
    ref = {("train_step", r["length"]): r for r in results if r["kind"] == "sft"}
    ref |= {("scoring", r["length"]): r for r in results if r["kind"] == "naive"}
    for r in results:
        base = ref[(r["bench"], r["length"])]
        lines.append(
            f"{r['bench']:<11}{r['kind']:<14}{r['length']:>7}{r['delta_bytes'] / mib:>11.1f}{r['peak_bytes'] / mib:>10.1f}"
            f"{r['delta_bytes'] / max(base['delta_bytes'], 1):>15.2f}{r['peak_bytes'] / base['peak_bytes']:>14.2f}"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    from trl_reasonmaxxer.plotting import new_figure, save_figure

    fig, ax = new_figure()
    for kind, label in (("chunked", "score_rollouts (chunked LM head)"), ("naive", "naive fp32 log_softmax")):
        rows = sorted((r["length"], r["delta_bytes"] / 2**20) for r in results if r["kind"] == kind)
        ax.plot([x for x, _ in rows], [y for _, y in rows], marker="o", label=label)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("peak memory above baseline (MiB)")
    ax.set_title(f"Entropy scoring, {results[0]['model']}, {results[0]['memory_kind']}")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, short sequences: a smoke run (one fresh process per measurement)",
    )
    parser.add_argument("--model", default="qwen2-mid", help=f"{', '.join(MODELS)} or a local model folder")
    parser.add_argument("--train-length", type=int, default=512, help="tokens per sequence of the training pair")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048], help="scoring lengths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="measure on CPU even when a GPU is present")
    parser.add_argument("--out", default="runs/memory")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.worker is not None:
        print(json.dumps(worker(json.loads(ns.worker))))
        return
    if ns.quick:
        ns.model, ns.train_length, ns.lengths = "tiny", 64, [64, 128, 256]
    common = {"model": ns.model, "threads": ns.threads, "cpu": ns.cpu}
    specs = [common | {"bench": "train_step", "kind": k, "length": ns.train_length} for k in ("sft", "reasonmaxxer")]
    specs += [common | {"bench": "scoring", "kind": k, "length": n} for n in ns.lengths for k in ("naive", "chunked")]
    from tqdm.auto import tqdm

    results = [measure(s) for s in tqdm(specs, desc="Measurements", unit="run")]
    os.makedirs(ns.out, exist_ok=True)
    with open(os.path.join(ns.out, "memory.json"), "w") as f:
        json.dump({"command": sys.argv, "results": results}, f, indent=2)
    plot([r for r in results if r["bench"] == "scoring"], os.path.join(ns.out, "memory_scoring.png"))
    print(f"Peak memory ({results[0]['device']}, {results[0]['memory_kind']}), model {ns.model}")
    print(table(results))


if __name__ == "__main__":
    main()
