"""HF-generate rollouts: row format, seeding, and a progress bar that moves within a batch."""

import pytest

from trl_reasonmaxxer import rollouts
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tiny_tokenizer()
    return make_tiny_model(tokenizer), tokenizer


class RecordingBar:
    """Stands in for tqdm: records every update so the test can see steps inside a batch."""

    def __init__(self, total, **kwargs):
        self.total, self.n, self.updates = total, 0, []

    def update(self, k):
        self.n += k
        self.updates.append(k)

    def set_postfix(self, **kwargs):
        self.postfix = kwargs

    def close(self):
        pass


def test_progress_counts_decoding_steps_and_ends_at_its_total(tiny, monkeypatch):
    model, tokenizer = tiny
    bars = []
    monkeypatch.setattr(rollouts, "tqdm", lambda **kw: bars.append(RecordingBar(**kw)) or bars[-1])
    prompts = [tokenizer("the cat")["input_ids"]] * 3
    groups = rollouts.generate_completions(
        model, tokenizer, prompts, num_generations=2, max_new_tokens=5, batch_size=4, temperature=1.0
    )
    (bar,) = bars
    assert bar.total == 2 * 5  # 3 prompts × 2 samples in batches of 2 prompts: 2 batches of up to 5 steps
    assert bar.n == bar.total
    assert bar.updates.count(1) >= 2  # per-step updates happened inside the batches, not only at their ends
    assert bar.postfix == {"seqs": "6/6"}
    assert [len(g) for g in groups] == [2, 2, 2]


def test_progress_does_not_change_the_samples(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("the cat")["input_ids"], tokenizer("a dog")["input_ids"]]
    kwargs = dict(num_generations=3, max_new_tokens=6, temperature=1.0, seed=5)
    shown = rollouts.generate_completions(model, tokenizer, prompts, disable_progress=False, **kwargs)
    hidden = rollouts.generate_completions(model, tokenizer, prompts, disable_progress=True, **kwargs)
    assert shown == hidden
    for group in shown:
        for row in group:
            assert row["truncated"] == (
                len(row["completion_ids"]) == 6 and row["completion_ids"][-1] != tokenizer.eos_token_id
            )
