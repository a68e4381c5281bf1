"""benchmarks/interventions.py: the problems an adapter gained and lost against the base, the share of them on which
each intervention carries the adapter's outcome, and the whole script on the tiny model (kept and reused)."""

import json

import pytest

from trl_reasonmaxxer.benchmarking.compare import piece_test_split

from ..helpers import load_benchmark
from .test_footprints import _strong_adapter, tiny_piece_store


def _records(correct: dict) -> list[dict]:
    return [{"id": pid, "greedy_correct": c} for pid, c in correct.items()]


def test_gained_and_lost_problems_in_the_adapters_order():
    bench = load_benchmark("interventions")
    base = _records({"a": True, "b": False, "c": False, "d": True, "e": False})
    adapter = _records({"e": True, "a": False, "b": True, "c": False, "d": False})
    assert bench.disagreements(base, adapter, per_side=5) == {"gained": ["e", "b"], "lost": ["a", "d"]}
    assert bench.disagreements(base, adapter, per_side=1) == {"gained": ["e"], "lost": ["a"]}
    with pytest.raises(ValueError, match="Problem z of the adapter's test records is not in the base's"):
        bench.disagreements(base, [*adapter, {"id": "z", "greedy_correct": True}], per_side=1)


def test_carrying_the_teachers_outcome(tmp_path):
    bench = load_benchmark("interventions")

    def row(base, random, entropy, oracle, teacher):
        return dict(base=base, random=random, entropy=entropy, oracle=oracle, teacher=teacher)

    correct = {
        "g1": row(False, False, True, True, True),  # gained, entropy carries it
        "g2": row(False, False, False, True, True),  # gained, entropy does not
        "l1": row(True, True, False, False, False),  # lost, entropy carries the loss
        "l2": row(True, True, True, True, True),  # lost under llama.cpp, not under float32: not in the split
    }
    sides = {"gained": ["g1", "g2"], "lost": ["l1", "l2"]}
    o = bench.outcomes(correct, sides)
    assert o["split_problems"] == 3
    p = o["policies"]
    assert p["entropy"]["carried"]["mean"] == pytest.approx(2 / 3)
    assert p["oracle"]["carried"]["mean"] == p["teacher"]["carried"]["mean"] == 1.0
    assert p["base"]["carried"]["mean"] == p["random"]["carried"]["mean"] == 0.0
    assert p["entropy"]["accuracy"] == {"gained": 0.5, "lost": 0.5}
    assert p["random"]["accuracy"] == {"gained": 0.0, "lost": 1.0}
    assert o["entropy-random"]["mean"] == pytest.approx(2 / 3) and o["entropy-random"]["better"] == 2
    lo, hi = p["entropy"]["carried"]["ci95"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0
    # float32 base and teacher agree everywhere: nothing to carry, said as None, not an error
    none = bench.outcomes({"l2": correct["l2"]}, {"gained": [], "lost": ["l2"]})
    assert none["split_problems"] == 0 and none["entropy-random"] is None
    assert none["policies"]["entropy"] == {"accuracy": {"gained": None, "lost": 1.0}, "carried": None}
    results = {
        "x": {"outcomes": o, "sides": sides, "oracle_matches_teacher": 1.0},
        "y": {"outcomes": none, "sides": {"gained": [], "lost": ["l2"]}, "oracle_matches_teacher": 1.0},
    }
    table = bench.format_table(results)
    assert "entropy - random: +0.67" in table and "entropy - random: -" in table
    assert bench.plot(results, str(tmp_path / "x.png")) and (tmp_path / "x.png").stat().st_size > 0


def test_interventions_of_a_trained_piece(tiny_model_dir, tmp_path, monkeypatch, capsys):
    bench = load_benchmark("interventions")
    settings, store = tiny_piece_store(tiny_model_dir, tmp_path, num_test_problems=6, max_completion_length=5)
    ids = [str(i) for i in piece_test_split({"settings": settings})[1]["id"]]
    base = _records({pid: i % 2 == 0 for i, pid in enumerate(ids)})
    adapter = _records({pid: i % 3 == 0 for i, pid in enumerate(ids)})
    store.save("base", {"method": "base", "seed": None, "test": {"summary": {}, "records": base}})
    recorded = "/elsewhere/runs/seed0/grpo_equal/adapter"
    trained = {"method": "grpo_equal", "seed": 0, "test": {"summary": {}, "records": adapter}, "adapter": recorded}
    store.save("grpo_equal-seed0", trained)
    runs = tmp_path / "runs"
    _strong_adapter(tiny_model_dir, runs / "seed0" / "grpo_equal" / "adapter")
    argv = ["--pieces-dir", str(tmp_path / "pieces"), "--pieces", "grpo_equal-seed0", "--runs-dir", str(runs)]
    argv += ["--per-side", "1", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "interventions.json")]

    r = bench.main(argv)["grpo_equal-seed0"]
    # ids 0..5 in order: base right on 0, 2, 4; adapter right on 0, 3 → gained 3, lost 2 (and 4, past per-side)
    assert r["sides"] == {"gained": [ids[3]], "lost": [ids[2]]}
    assert set(r["correct"]) == {ids[2], ids[3]}
    assert set(r["interventions"]) == {"base", "random", "entropy", "oracle", "teacher"}
    assert r["oracle_matches_teacher"] == 1.0  # the oracle's greedy decode is the adapter's, token for token
    assert r["config"]["tau"] == 1.2 and r["config"]["max_completion_length"] == 5
    assert set(r["outcomes"]["policies"]) == set(r["interventions"])
    written = json.loads((tmp_path / "interventions.json").read_text())
    assert written["interventions"]["grpo_equal-seed0"]["sides"] == r["sides"]
    assert "gained acc" in capsys.readouterr().out
    assert (tmp_path / "interventions.png").stat().st_size > 0

    monkeypatch.setattr(bench, "run_analysis", lambda *a, **k: pytest.fail("analysed again"))
    assert bench.main(argv)["grpo_equal-seed0"] == r  # kept: reused
    with pytest.raises(ValueError, match=r"No trained piece \['base'\] .* it has: grpo_equal-seed0"):
        bench.main([*argv, "--pieces", "base"])
    store.save("grpo_equal-seed1", dict(trained, seed=1, test={"summary": {}, "records": base}))
    with pytest.raises(ValueError, match="grpo_equal-seed1 and the base agree on every test problem's greedy"):
        bench.main([*argv, "--pieces", "grpo_equal-seed1"])
