"""Teacher-forced scoring (``trl_reasonmaxxer.scoring``) against a naive full-logits computation."""

from __future__ import annotations

import pytest
import torch

from trl_reasonmaxxer.scoring import score_rollouts
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tiny_tokenizer()
    return make_tiny_model(tokenizer, seed=1), tokenizer


def naive_scores(model, prompt, completion):
    """Entropy and log-prob of completion token j from the full logits at input position P + j - 1."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = logits.log_softmax(-1)
    P = len(prompt)
    entropy, logps = [], []
    for j, token in enumerate(completion):
        row = logp[P + j - 1]
        entropy.append(float(-(row.exp() * row).sum()))
        logps.append(float(row[token]))
    return entropy, logps


def sequences(vocab: int):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (7, 1), (1, 6), (4, 4), (2, 9), (5, 2), (6, 3)]  # (prompt, completion) lengths
    return [
        (torch.randint(4, vocab, (p,), generator=g).tolist(), torch.randint(4, vocab, (c,), generator=g).tolist())
        for p, c in shapes
    ]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_score_rollouts_matches_naive_logits_at_shifted_positions(tiny, batch_size):
    model, tokenizer = tiny
    seqs = sequences(len(tokenizer))
    scored = score_rollouts(model, seqs, tokenizer.pad_token_id, batch_size=batch_size, disable_progress=True)
    assert len(scored) == len(seqs)
    for (prompt, completion), (entropy, logps) in zip(seqs, scored):
        assert len(entropy) == len(logps) == len(completion)  # one value per completion token, input order kept
        ref_entropy, ref_logps = naive_scores(model, prompt, completion)
        assert entropy == pytest.approx(ref_entropy, abs=1e-4)
        assert logps == pytest.approx(ref_logps, abs=1e-4)


def test_score_rollouts_is_not_off_by_one(tiny):
    """Sanity check that the comparison above can fail: the unshifted position gives different numbers."""
    model, tokenizer = tiny
    prompt, completion = sequences(len(tokenizer))[4]
    (entropy, logps), = score_rollouts(model, [(prompt, completion)], tokenizer.pad_token_id, disable_progress=True)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    P = len(prompt)
    unshifted = [float(logp[P + j][t]) for j, t in enumerate(completion[:-1])]
    assert logps[:-1] != pytest.approx(unshifted, abs=1e-3)
    assert all(h > 0 for h in entropy) and all(lp < 0 for lp in logps)


def test_score_rollouts_restores_training_mode(tiny):
    model, tokenizer = tiny
    model.train()
    score_rollouts(model, sequences(len(tokenizer))[:2], tokenizer.pad_token_id, disable_progress=True)
    assert model.training
    model.eval()
    score_rollouts(model, sequences(len(tokenizer))[:2], tokenizer.pad_token_id, disable_progress=True)
    assert not model.training
