"""What the entropy gate picks: the kind of token at the forks, where they sit in the answer, and whether the rollouts
the loss pushes up and those it pushes down fork at the same tokens. Pure functions over decoded rollouts."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from .divergence import _share


KINDS = ("number", "operator", "word", "format")
_NUMBER = re.compile(r"[\d.,]*\d[\d.,]*")
_OPERATOR = re.compile(r"(?!\*\*)[+\-*/=×÷^%<>()]+")  # not `**`: Markdown bold in these answers
_WORD = re.compile(r"\w+")
_SIDES = (("positive", True), ("negative", False))  # report names of the rollouts' advantage signs


def token_kind(text: str) -> str:
    """``number`` (digits, with separators), ``operator`` (arithmetic symbols), ``word`` (anything alphabetic) or
    ``format`` (whitespace, punctuation, markup such as ``**``). The token's surrounding whitespace is ignored."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return "number"
    if _OPERATOR.fullmatch(text):
        return "operator"
    if _WORD.search(text):
        return "word"
    return "format"


def fork_profile(rollouts: Sequence[dict], tau: float, top: int = 15) -> dict:
    """Profile of the fork tokens (base entropy strictly above ``tau``) of scored rollouts.

    Each rollout is ``{"problem": key, "tokens": [decoded token], "entropy": [base entropy per token], "positive":
    bool}``, ``positive`` meaning a positive advantage (the loss raises its fork tokens; it lowers the others').
    Returns the share of tokens gated; per token kind, its tokens, forks, share of all forks, fork rate and mean
    entropy; the share of forks in each tenth of the answer; forks per rollout, positive and negative; the mean, over
    problems with both, share of a problem's negative fork tokens whose text is also a fork token of one of its
    positive rollouts (the tokens the loss pushes both ways); and the most common fork tokens of each side.
    """
    kinds = {k: {"tokens": 0, "forks": 0, "entropy": 0.0} for k in KINDS}
    deciles = [0] * 10
    per_rollout = {True: [], False: []}
    top_forks = {True: Counter(), False: Counter()}
    by_problem = defaultdict(lambda: {True: Counter(), False: Counter()})
    for r in rollouts:
        tokens, entropy = r["tokens"], r["entropy"]
        if len(tokens) != len(entropy):
            raise ValueError(f"A rollout has {len(tokens)} tokens but {len(entropy)} entropies; they must align.")
        forks = 0
        for t, (text, h) in enumerate(zip(tokens, entropy)):
            kind = kinds[token_kind(text)]
            kind["tokens"] += 1
            kind["entropy"] += h
            if h > tau:
                forks += 1
                kind["forks"] += 1
                deciles[min(9, 10 * t // len(tokens))] += 1
                top_forks[r["positive"]][text] += 1
                by_problem[r["problem"]][r["positive"]][text] += 1
        per_rollout[r["positive"]].append(forks)
    total_tokens = sum(k["tokens"] for k in kinds.values())
    total_forks = sum(k["forks"] for k in kinds.values())
    shared = [
        sum(n for text, n in sides[False].items() if text in sides[True]) / sum(sides[False].values())
        for sides in by_problem.values()
        if sides[True] and sides[False]
    ]
    return {
        "tau": tau,
        "rollouts": len(rollouts),
        "tokens": total_tokens,
        "forks": total_forks,
        "fork_share": _share(total_forks, total_tokens),
        "by_kind": {
            name: {
                "tokens": k["tokens"],
                "forks": k["forks"],
                "share_of_forks": _share(k["forks"], total_forks),
                "fork_rate": _share(k["forks"], k["tokens"]),
                "mean_entropy": _share(k["entropy"], k["tokens"]),
            }
            for name, k in kinds.items()
        },
        "position_deciles": [_share(n, total_forks) for n in deciles],
        "forks_per_rollout": {side: _share(sum(per_rollout[flag]), len(per_rollout[flag])) for side, flag in _SIDES},
        "negative_forks_shared_with_positive": _share(sum(shared), len(shared)),
        "top_forks": {side: top_forks[flag].most_common(top) for side, flag in _SIDES},
    }
