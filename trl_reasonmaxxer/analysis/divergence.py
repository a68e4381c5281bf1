"""Token-level divergence between a base model and a teacher (e.g. an RL-trained model): pure functions.

At every completion position of the base model's greedy decode, both models see the identical prefix. The teacher's
greedy token is located in the base model's ranking (rank 1 = the base model's own greedy token) and the position is
classified as in the paper (method.md §2, Eq. 3): unshifted (rank 1), reranked (rank 2..top_k) or shifted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


UNSHIFTED, RERANKED, SHIFTED = "unshifted", "reranked", "shifted"
CLASSES = (UNSHIFTED, RERANKED, SHIFTED)


def token_rank(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``tokens[b]`` in ``logits[b]`` (``[B, V]``), ties broken by the lower token id.

    The tie rule is ``torch.argmax``'s (first maximal index), so rank 1 holds exactly when the token is the argmax.
    """
    chosen = logits.gather(-1, tokens[:, None])
    ids = torch.arange(logits.shape[-1], device=logits.device)
    ahead = (logits > chosen) | ((logits == chosen) & (ids[None, :] < tokens[:, None]))
    return 1 + ahead.sum(-1)


def classify_rank(rank: int, top_k: int = 5) -> str:
    """The class of a position from the teacher token's rank under the base model."""
    if rank < 1:
        raise ValueError(f"A rank is 1-based, got {rank}.")
    return UNSHIFTED if rank == 1 else RERANKED if rank <= top_k else SHIFTED


def rank_histogram(ranks: Sequence[int], max_rank: int = 20) -> dict[str, int]:
    """Counts of ranks ``"1"`` … ``str(max_rank)``, then ``">max_rank"`` for the rest."""
    counts = Counter(str(r) if r <= max_rank else f">{max_rank}" for r in ranks)
    return {key: counts.get(key, 0) for key in [*map(str, range(1, max_rank + 1)), f">{max_rank}"]}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def summarize_divergence(ranks: Sequence[int], entropies: Sequence[float], top_k: int = 5) -> dict:
    """Statistics of per-position teacher ranks and base entropies (nats), flattened over all completions.

    Returns, for each class, its ``count`` and ``percent`` of positions and the ``mean_entropy`` of the base there;
    ``entropy_ratio`` = mean base entropy at reranked / at unshifted positions (None when either is empty); the
    teacher token's mean base rank over ``reranked`` positions (the paper's Table 2 column, ranks 2..top_k) and over
    all ``changed`` (reranked + shifted) positions, whose share is ``changed_percent``; and the rank histogram.
    """
    if len(ranks) != len(entropies):
        raise ValueError(f"Got {len(ranks)} ranks but {len(entropies)} entropies; pass one of each per position.")
    if not ranks:
        raise ValueError("No completion positions to analyse: every completion is empty.")
    labels = [classify_rank(r, top_k) for r in ranks]
    summary: dict = {"positions": len(ranks), "top_k": top_k}
    for name in CLASSES:
        hs = [h for h, c in zip(entropies, labels) if c == name]
        summary[name] = {"count": len(hs), "percent": 100.0 * len(hs) / len(ranks), "mean_entropy": _mean(hs)}
    unshifted, reranked = summary[UNSHIFTED]["mean_entropy"], summary[RERANKED]["mean_entropy"]
    summary["entropy_ratio"] = reranked / unshifted if reranked is not None and unshifted else None
    summary["mean_rank_reranked"] = _mean([r for r, c in zip(ranks, labels) if c == RERANKED])
    changed = [r for r in ranks if r > 1]
    summary["changed_percent"] = 100.0 * len(changed) / len(ranks)
    summary["mean_rank_changed"] = _mean(changed)
    summary["median_rank_changed"] = float(torch.tensor(changed).float().median()) if changed else None
    summary["rank_histogram"] = rank_histogram(ranks)
    return summary


def change_agreement(ranks_a: Sequence[int], ranks_b: Sequence[int]) -> dict:
    """Where two teachers depart from the same base greedy decode, do they depart at the same positions, to the
    same token?

    ``ranks_a`` and ``ranks_b`` hold each teacher's greedy token's base rank (:func:`token_rank`) at the same
    positions, so two equal ranks above 1 are the same token. Returns the counts of positions ``a`` changes, ``b``
    changes and ``both`` change, ``same_token`` of those; the shares ``b_given_a`` (of ``a``'s changes, where ``b``
    changes too), ``a_given_b`` and ``same_given_both``; and two chance levels: ``chance_both``, the overlap if the
    two changed independently at their own rates, and ``chance_same``, the chance that two changes at one position
    pick the same token if each drew its rank from its own histogram over the shared positions. None where a
    share divides by 0.
    """
    if len(ranks_a) != len(ranks_b):
        raise ValueError(
            f"Got {len(ranks_a)} and {len(ranks_b)} ranks: both teachers must be read along the same base decode "
            "(same model, problems and token budget)."
        )
    if not ranks_a:
        raise ValueError("No positions to compare.")
    changed_a = sum(a > 1 for a in ranks_a)
    changed_b = sum(b > 1 for b in ranks_b)
    shared = [(a, b) for a, b in zip(ranks_a, ranks_b) if a > 1 and b > 1]
    same = sum(a == b for a, b in shared)
    hist_a, hist_b = Counter(a for a, _ in shared), Counter(b for _, b in shared)
    chance_same = sum(hist_a[r] * hist_b[r] for r in hist_a) / len(shared) ** 2 if shared else None

    return {
        "positions": len(ranks_a),
        "a": changed_a,
        "b": changed_b,
        "both": len(shared),
        "same_token": same,
        "b_given_a": _share(len(shared), changed_a),
        "a_given_b": _share(len(shared), changed_b),
        "same_given_both": _share(same, len(shared)),
        "chance_both": changed_a * changed_b / len(ranks_a),
        "chance_same": chance_same,
    }
