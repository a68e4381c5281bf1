"""Teacher-forced scoring (``trl_reasonmaxxer.scoring``) against a naive full-logits computation."""

from __future__ import annotations

import pytest
import torch

from trl_reasonmaxxer.scoring import score_rollouts
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer

from .helpers import softcapped_model


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
    ((entropy, logps),) = score_rollouts(model, [(prompt, completion)], tokenizer.pad_token_id, disable_progress=True)
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


def test_score_rollouts_feeds_the_head_chunk_size_tokens_at_a_time(tiny):
    """Memory does not grow with the vocabulary per token: the LM head projects at most chunk_size completion
    tokens at once (plus the model's own last position), and chunk boundaries (2 does not divide the lengths)
    change nothing."""
    model, tokenizer = tiny
    seqs = sequences(len(tokenizer))
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    try:
        chunked = score_rollouts(
            model, seqs, tokenizer.pad_token_id, batch_size=16, disable_progress=True, chunk_size=2
        )
    finally:
        handle.remove()
    tokens = sum(len(c) for _, c in seqs)  # 30
    # the forward's own logits_to_keep=1 projection and the head check (one position per sequence), then chunks
    assert rows == [len(seqs)] * 2 + [2] * (tokens // 2)
    whole = score_rollouts(model, seqs, tokenizer.pad_token_id, batch_size=16, disable_progress=True)
    for (h1, l1), (h2, l2) in zip(chunked, whole, strict=True):
        assert h1 == pytest.approx(h2, abs=1e-6) and l1 == pytest.approx(l2, abs=1e-6)


def test_score_rollouts_refuses_a_model_that_transforms_its_logits(tiny):
    """Gemma-2 soft-caps its logits after the head: projecting hidden states through the head would give other
    entropies, so scoring stops with an error naming the cause."""
    _, tokenizer = tiny
    model = softcapped_model(tokenizer)
    with pytest.raises(ValueError, match="soft-capping or scaling"):
        score_rollouts(model, sequences(len(tokenizer))[:2], tokenizer.pad_token_id, disable_progress=True)
    assert score_rollouts(
        softcapped_model(tokenizer, softcap=None), sequences(len(tokenizer))[:1], 0, disable_progress=True
    )


def test_an_empty_prompt_is_refused_instead_of_shifting_every_entry(tiny):
    """With no prompt token, completion token 0 has no predicting position: the entropy row would be one entry
    short and the fork mask / base log-probs of the rest shifted by one token (audit F5)."""
    model, tokenizer = tiny
    seqs = sequences(len(tokenizer))[:2] + [([], [5, 6, 7, 8, 9])]
    with pytest.raises(ValueError, match="Sequence 2 has an empty prompt.*at least one token"):
        score_rollouts(model, seqs, tokenizer.pad_token_id, disable_progress=True)


def test_the_trainer_refuses_a_pool_with_an_empty_prompt(tmp_path):
    from trl_reasonmaxxer import ReasonMaxxerTrainer
    from trl_reasonmaxxer.testing import save_tiny_model

    from .helpers import make_pool, tiny_config

    model = save_tiny_model(str(tmp_path / "model"))
    # prompt 0 has no token, prompt 1 has 4; the pool is unscored, so the trainer scores it
    pool = make_pool({0: [(1.0, 5), (0.0, 5)], 1: [(1.0, 3), (0.0, 3)]}, prompt_len={0: 0, 1: 4}, scored=False)
    trainer = ReasonMaxxerTrainer(model, args=tiny_config(tmp_path / "run", fork_gate="all"), rollout_dataset=pool)
    with pytest.raises(ValueError, match="empty prompt"):
        trainer.prepare_training_data()
    # a pool scored elsewhere with rows of the wrong length is refused when it is passed in
    scored = make_pool({0: [(1.0, [0.1, 2.0, 0.3]), (0.0, [2.0, 0.1, 0.3])]}, prompt_len=2).map(
        lambda row: {"entropy": row["entropy"][1:], "logps": row["logps"][1:]}
    )
    with pytest.raises(ValueError, match=r"rows \[0, 1\]: `entropy` and `completion_ids` differ in length"):
        ReasonMaxxerTrainer(model, args=tiny_config(tmp_path / "run2", fork_gate="all"), rollout_dataset=scored)
