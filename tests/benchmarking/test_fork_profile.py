"""analysis.forks (what the entropy gate picks) and benchmarks/fork_profile.py (the profile of a scored rollout
cache)."""

import json

import pytest

from trl_reasonmaxxer.analysis.forks import fork_profile, token_kind
from trl_reasonmaxxer.cache import ChunkCache, save_pool

from ..helpers import load_benchmark


@pytest.mark.parametrize(
    "text, kind",
    [
        (" 12", "number"),
        ("3.5", "number"),
        ("1,000", "number"),
        (" +", "operator"),
        ("=", "operator"),
        (" Let", "word"),
        ("3rd", "word"),
        (".\n", "format"),
        (" **", "format"),
        ("\n\n", "format"),
    ],
)
def test_token_kind(text, kind):
    assert token_kind(text) == kind


def _rollout(problem, tokens, entropy, positive):
    return {"problem": problem, "tokens": tokens, "entropy": entropy, "positive": positive}


def test_fork_profile_counts_kinds_positions_and_shared_tokens():
    rollouts = [
        # problem 0: the positive forks at " Let" and " 7"; the negative at " Let" (shared) and " So" (not)
        _rollout(0, [" Let", " x", " 7", "."], [2.0, 0.1, 1.5, 0.2], True),
        _rollout(0, [" Let", " So", " 3", "."], [2.0, 1.6, 0.1, 1.4], False),  # 1.4 is not > τ: no fork
        # problem 1: only negatives, so it has no shared share
        _rollout(1, [" We", " +", " 2", " 2"], [1.0, 3.0, 0.0, 0.0], False),
    ]
    p = fork_profile(rollouts, tau=1.4)
    assert (p["rollouts"], p["tokens"], p["forks"]) == (3, 12, 5)
    assert p["fork_share"] == pytest.approx(5 / 12)
    kinds = p["by_kind"]
    assert (kinds["word"]["tokens"], kinds["word"]["forks"]) == (5, 3)
    assert kinds["word"]["fork_rate"] == pytest.approx(3 / 5)
    assert kinds["word"]["share_of_forks"] == pytest.approx(3 / 5)
    assert (kinds["number"]["tokens"], kinds["number"]["forks"]) == (4, 1)
    assert kinds["number"]["mean_entropy"] == pytest.approx((1.5 + 0.1) / 4)
    assert (kinds["operator"]["forks"], kinds["format"]["tokens"], kinds["format"]["forks"]) == (1, 2, 0)
    # positions 0 (×2), 2, 1, 1 of 4-token answers → tenths 0, 0, 5, 2, 2
    assert p["position_deciles"] == pytest.approx([0.4, 0, 0.4, 0, 0, 0.2, 0, 0, 0, 0])
    assert p["forks_per_rollout"] == {"positive": 2.0, "negative": 1.5}
    assert p["negative_forks_shared_with_positive"] == pytest.approx(0.5)  # problem 0 only: " Let" of " Let", " So"
    assert p["top_forks"]["negative"][0] == (" Let", 1) and dict(p["top_forks"]["positive"]) == {" Let": 1, " 7": 1}


def test_fork_profile_rejects_misaligned_rollouts_and_handles_no_forks():
    with pytest.raises(ValueError, match="3 tokens but 2 entropies"):
        fork_profile([_rollout(0, ["a", "b", "c"], [0.1, 0.2], True)], tau=1.0)
    p = fork_profile([_rollout(0, ["a"], [0.1], True)], tau=1.0)
    assert p["forks"] == 0 and p["by_kind"]["word"]["share_of_forks"] is None
    assert p["negative_forks_shared_with_positive"] is None and p["forks_per_rollout"]["negative"] is None


def _pool(tmp_path, tiny_model_dir):
    """A saved pool of 2 problems × 2 rollouts decoded by the tiny model's tokenizer, with base scores for the mixed
    problem's rollouts and one damaged score row."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(" Let x be 7.", add_special_tokens=False)["input_ids"]
    rows = [
        {"prompt_index": 0, "prompt_ids": [1], "completion_ids": ids, "reward": 1.0},
        {"prompt_index": 0, "prompt_ids": [1], "completion_ids": ids[:2], "reward": 0.0},
        {"prompt_index": 1, "prompt_ids": [1], "completion_ids": ids, "reward": 0.0},
        {"prompt_index": 1, "prompt_ids": [1], "completion_ids": ids, "reward": 0.0},
    ]
    root = tmp_path / "rollouts"
    root.mkdir()
    save_pool(rows, str(root / "pool"))
    high = [2.0] + [0.0] * (len(ids) - 1)
    scores = [
        {"row": 0, "entropy": high, "logps": [-0.1] * len(ids)},
        {"row": 1, "entropy": [2.0, 0.0], "logps": [-0.1, -0.1]},
        {"row": 2, "entropy": [0.0], "logps": [-0.1]},  # one value for a longer rollout: damaged
    ]
    ChunkCache(str(root)).save("scores", 0, scores)
    return root, tok, ids


def test_fork_profile_script_profiles_a_scored_cache(tmp_path, tiny_model_dir, capsys):
    bench = load_benchmark("fork_profile")
    root, tok, ids = _pool(tmp_path, tiny_model_dir)
    rows, scores = bench.scored_rollouts(str(root))
    assert sorted(scores) == [0, 1]  # the damaged row is left out
    inputs = bench.profile_inputs(rows, scores, lambda t: tok.decode([t]))
    assert [r["positive"] for r in inputs] == [True, False]  # reward against its problem's mean
    assert inputs[0]["tokens"] == [tok.decode([t]) for t in ids] and len(inputs[1]["tokens"]) == 2

    out = tmp_path / "docs" / "fork_profile.json"
    result = bench.main(["--rollouts", str(root), "--tau", "1.0", "--model", tiny_model_dir, "--out", str(out)])
    assert json.loads(out.read_text())["profile"] == json.loads(json.dumps(result["profile"]))
    assert result["profile"]["forks"] == 2 and (tmp_path / "docs" / "fork_profile.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "Ignoring 1 cached score rows" in printed and "2 of" in printed


def test_fork_profile_script_says_what_folder_it_needs(tmp_path):
    bench = load_benchmark("fork_profile")
    with pytest.raises(FileNotFoundError, match=r"holds no saved pool \(pool/\).*rollouts/<key>"):
        bench.scored_rollouts(str(tmp_path))
    save_pool([{"prompt_index": 0, "completion_ids": [1, 2], "reward": 1.0}], str(tmp_path / "pool"))
    with pytest.raises(ValueError, match=r"no scores that fit the pool's rollouts \(0 did not\)"):
        bench.scored_rollouts(str(tmp_path))  # a pool not scored yet
