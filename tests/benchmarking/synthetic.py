"""Hand-made comparison results and pieces (no model): per-problem scores chosen so that the paired differences can
be checked by hand.

Test problems p0..p3 and transfer problems t0..t3; a score is the number of correct completions out of 2 samples
(pass@1 = score / 2), greedy is correct when both samples are. An evaluation with truncation (the base's test) has
the second sample of its first problem truncated.
"""

from trl_reasonmaxxer.benchmarking.pieces import PIECE_SCHEMA


TEST = {
    ("base", None): [0, 1, 2, 0],
    ("reasonmaxxer", 0): [1, 1, 2, 0],
    ("reasonmaxxer", 1): [2, 1, 2, 1],
    ("grpo_equal", 0): [0, 1, 2, 0],
    ("grpo_equal", 1): [1, 1, 2, 0],
    ("grpo_3x", 0): [1, 2, 2, 0],
    ("grpo_3x", 1): [1, 1, 2, 0],
}
TRANSFER = {
    ("base", None): [0, 2, 1, 0],
    ("reasonmaxxer", 0): [0, 2, 2, 0],
    ("reasonmaxxer", 1): [1, 2, 1, 0],
}
VALIDATION = {("base", None): 0.5, ("reasonmaxxer", 0): 0.6, ("reasonmaxxer", 1): 0.7}
RM_TOKENS = {0: 1000.0, 1: 1200.0}
SETTINGS = {
    "dataset_name": "svamp",
    "model": "tiny",
    "num_test_problems": 4,
    "num_samples": 2,
    "prompt_style": "brief",
}
SETTINGS |= {"max_completion_length": 320, "transfer_dataset_name": "gsm8k", "num_transfer_problems": 4}
SETTINGS |= {"num_pool_problems": 8, "num_validation_problems": 4}


def evaluation(ids, scores, truncation=0.0) -> dict:
    records = [
        {
            "id": i,
            "num_correct": s,
            "correct": [k < s for k in range(2)],
            "greedy_correct": s == 2,
            "truncated": [False, truncation > 0 and n == 0],
        }
        for n, (i, s) in enumerate(zip(ids, scores))
    ]
    summary = {
        "num_problems": len(ids),
        "num_samples": 2,
        "pass@1": sum(scores) / 2 / len(scores),
        "engine": "llama.cpp",
        "truncation_rate": truncation,
        "greedy_truncation_rate": truncation,
        "mean_completion_tokens": 100.0,
    }
    return {"summary": summary, "records": records}


def ledger(tokens: float) -> dict:
    return {
        "method": "m",
        "device": "cpu",
        "seconds": {"generation": tokens / 20, "scoring": 0.0, "training": tokens / 20, "evaluation": 5.0},
        "compute_wall_s": tokens / 10,
        "compute_tokens": tokens,
        "token_totals": {"generated": tokens / 4, "forwarded": tokens / 4, "backpropagated": tokens / 4},
        "peak_memory_bytes": 2e9,
        "peak_memory_kind": "rss_peak",
    }


def result(method: str, seed: int | None) -> dict:
    """What a ``_Runner.run_*`` returns for (method, seed)."""
    out = {"test": evaluation([f"p{i}" for i in range(4)], TEST[method, seed], truncation=0.15 * (seed is None))}
    if (method, seed) in TRANSFER:
        out["transfer"] = evaluation([f"t{i}" for i in range(4)], TRANSFER[method, seed])
    if (method, seed) in VALIDATION:
        out["validation"] = {"summary": {"pass@1": VALIDATION[method, seed], "mean_completion_tokens": 100.0}}
    if method == "base":
        return out | {"ledger": ledger(0.0) | {"compute_tokens": 0.0, "compute_wall_s": 0.0}, "engines": {}}
    tokens = {"reasonmaxxer": RM_TOKENS[seed], "grpo_equal": RM_TOKENS[seed], "grpo_3x": 3300.0}[method]
    out |= {"ledger": ledger(tokens), "engines": {"rollouts": "llama.cpp", "evaluation": "llama.cpp"}}
    if method == "reasonmaxxer":
        sweep = [{"fork": {"fork_threshold": t}, "validation_pass@1": v} for t, v in ((1.2, 0.55), (1.4, 0.6))]
        out |= {"fork_choice": {"fork_threshold": 1.4}, "fork_sweep": sweep}
    else:
        # the 3x run crosses ReasonMaxxer's validation gain (+0.15) halfway between its checkpoints
        gains = [(0, 0.0, 0.0), (10, 1500.0, 0.1), (20, 3300.0, 0.2)] if method == "grpo_3x" else [(0, 0.0, 0.0)]
        curve = [{"step": s, "compute": {"tokens": c, "wall_s": c / 10}, "gain": g} for s, c, g in gains]
        out |= {"validation_curve": curve, "grpo_budget": {"multiple": 1.0, "realized_over_target": 1.02}}
    return out


def piece(method: str, seed: int | None, settings: dict = SETTINGS) -> dict:
    """A piece as ``PieceStore.save`` writes it."""
    raw = result(method, seed)
    compute = {u: raw["ledger"][f"compute_{u}"] for u in ("wall_s", "tokens")}
    meta = {"schema": PIECE_SCHEMA, "commit": "abc123", "settings": settings}
    return meta | {"method": method, "seed": seed, "compute": compute} | raw


def all_pieces() -> dict:
    """Every piece of seeds 0 and 1 with multiples 1 and 3, except grpo_3x-seed1."""
    names = {(m, s): m if s is None else f"{m}-seed{s}" for m, s in TEST if (m, s) != ("grpo_3x", 1)}
    return {name: piece(m, s) for (m, s), name in names.items()}
