"""What does the entropy gate pick on a scored pool? The kind of token at the forks, where they sit in the answer, and
how often the rollouts the loss pushes up and those it pushes down fork at the same token.

Reads a rollout cache of ReasonMaxxer's offline phase (``<output_dir>/.../rollouts/<key>``: the saved ``pool/`` and
its ``scores/``, the base model's entropy per completion token), decodes every scored rollout with the model's
tokenizer and profiles its tokens with ``analysis.forks.fork_profile`` at the threshold τ. A rollout is positive when
its advantage is (the sign the loss gives its fork tokens). No model runs.

    python benchmarks/fork_profile.py --rollouts runs/evidence/seed0/reasonmaxxer/rollouts/<key> --tau 1.4 \\
        --out docs/results/fork_profile.json

Prints a table, writes ``--out`` and a PNG beside it (share of tokens vs share of forks by kind; forks along the
answer).
"""

from __future__ import annotations

import argparse
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.analysis.forks import KINDS, fork_profile
from trl_reasonmaxxer.benchmarking.pieces import git_commit
from trl_reasonmaxxer.cache import ChunkCache
from trl_reasonmaxxer.default_model import resolve_model
from trl_reasonmaxxer.evaluation import save_results
from trl_reasonmaxxer.offline import cached_scores
from trl_reasonmaxxer.plotting import new_figure, save_figure
from trl_reasonmaxxer.selection import group_advantages


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", required=True, help="a rollout cache folder holding pool/ and scores/")
    parser.add_argument("--tau", type=float, default=1.4, help="the fork threshold τ (nats)")
    parser.add_argument("--model", default="default", help="whose tokenizer decodes the rollouts")
    parser.add_argument("--out", default="docs/results/fork_profile.json")
    return parser.parse_args(argv)


def scored_rollouts(root: str) -> tuple[list[dict], dict]:
    """The saved pool's rows and their cached base scores; raises when the folder is not a scored rollout cache."""
    import datasets

    pool = os.path.join(root, "pool")
    if not os.path.isdir(pool):
        raise FileNotFoundError(
            f"{root} holds no saved pool (pool/): pass a rollout cache folder of ReasonMaxxer's offline phase, "
            "<output_dir>/.../rollouts/<key>, the folder that has pool/ and scores/."
        )
    rows = datasets.load_from_disk(pool).to_list()
    scores, misfits = cached_scores(ChunkCache(root), rows)
    if not scores:
        raise ValueError(
            f"{root}/scores has no scores that fit the pool's rollouts ({misfits} did not): nothing to profile."
        )
    if misfits:
        print(f"Ignoring {misfits} cached score rows that do not fit their rollouts (edited or damaged).")
    return rows, scores


def profile_inputs(rows: list[dict], scores: dict, decode) -> list[dict]:
    """``fork_profile``'s rollouts: each scored row decoded token by token, positive when its advantage among its
    problem's rollouts (all of them, scored or not; ``selection.group_advantages``, the trainer's) is."""
    advantages = group_advantages([r["prompt_index"] for r in rows], [r["reward"] for r in rows])
    return [
        {
            "problem": rows[i]["prompt_index"],
            "tokens": [decode(t) for t in rows[i]["completion_ids"]],
            "entropy": entropy,
            "positive": advantages[i] > 0,
        }
        for i, (entropy, _) in sorted(scores.items())
    ]


def share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def format_table(profile: dict) -> str:
    lines = [
        f"fork tokens (base entropy > τ {profile['tau']}) of {profile['rollouts']} rollouts: {profile['forks']} of "
        f"{profile['tokens']} tokens ({share(profile['fork_share'])})",
        f"{'kind':<10}{'tokens':>9}{'forks':>7}{'of forks':>10}{'fork rate':>11}{'mean H':>8}",
    ]
    for kind in KINDS:
        k = profile["by_kind"][kind]
        entropy = "—" if k["mean_entropy"] is None else f"{k['mean_entropy']:.2f}"
        lines.append(
            f"{kind:<10}{k['tokens']:>9}{k['forks']:>7}{share(k['share_of_forks']):>10}{share(k['fork_rate']):>11}"
            f"{entropy:>8}"
        )
    per = profile["forks_per_rollout"]
    lines += [
        "forks by tenth of the answer: " + " ".join(share(v) for v in profile["position_deciles"]),
        f"forks per rollout: positive {per['positive']:.1f}, negative {per['negative']:.1f}; negative fork tokens "
        f"that are also a positive rollout's fork token (same problem): "
        f"{share(profile['negative_forks_shared_with_positive'])}",
    ]
    for side in ("positive", "negative"):
        lines.append(f"top {side} forks: " + ", ".join(f"{text!r} {n}" for text, n in profile["top_forks"][side][:10]))
    return "\n".join(lines)


def plot(profile: dict, path: str) -> str:
    fig, (left, right) = new_figure(9.0, 3.5, ncols=2)
    x = range(len(KINDS))
    tokens = [profile["by_kind"][k]["tokens"] / profile["tokens"] for k in KINDS]
    forks = [profile["by_kind"][k]["share_of_forks"] or 0.0 for k in KINDS]
    left.bar([i - 0.2 for i in x], tokens, width=0.4, label="share of tokens")
    left.bar([i + 0.2 for i in x], forks, width=0.4, label=f"share of forks (H > {profile['tau']})")
    left.set_xticks(list(x), KINDS)
    left.set_title("Which tokens the gate picks")
    left.legend()
    right.bar([f"{10 * i}–{10 * i + 10}" for i in range(10)], [v or 0.0 for v in profile["position_deciles"]])
    right.set_xlabel("position in the answer (%)")
    right.set_ylabel("share of forks")
    right.tick_params(axis="x", labelsize=7, labelrotation=45)
    right.set_title("Where the forks sit")
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    rows, scores = scored_rollouts(args.rollouts)
    profile = fork_profile(profile_inputs(rows, scores, lambda t: tokenizer.decode([t])), args.tau)
    result = {"rollouts_dir": args.rollouts, "model": args.model, "commit": git_commit(), "profile": profile}
    print(format_table(profile))
    save_results(result, args.out)
    print(f"wrote {args.out} and {plot(profile, os.path.splitext(args.out)[0] + '.png')}")
    return result


if __name__ == "__main__":
    main()
