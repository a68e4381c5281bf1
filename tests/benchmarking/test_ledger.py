"""The cost ledger: exclusive phase timing, token counting by phase, compute units, peak memory."""

import pytest
import torch

from trl_reasonmaxxer.benchmarking.ledger import (
    CostLedger,
    backbone,
    forward_token_count,
    peak_memory,
    reset_peak_memory,
)
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_nested_phases_charge_exclusive_time():
    clock = FakeClock()
    ledger = CostLedger("m", clock=clock)
    clock.now = 5.0  # time outside any phase is nobody's
    with ledger.phase("scoring"):
        clock.now = 6.0
        with ledger.phase("generation"):
            clock.now = 10.0
        clock.now = 11.5
    with ledger.phase("training"):
        clock.now = 14.5
        with ledger.phase("evaluation"):
            clock.now = 20.0
        clock.now = 21.0
    assert ledger.seconds == {"generation": 4.0, "scoring": 2.5, "training": 4.0, "evaluation": 5.5}
    assert ledger.compute("wall_s") == 10.5  # evaluation is measurement, not the method's cost


def test_compute_includes_the_running_phase():
    clock = FakeClock()
    ledger = CostLedger("m", clock=clock)
    with ledger.phase("training"):
        clock.now = 3.0
        assert ledger.compute("wall_s") == 3.0
        clock.now = 4.0
    assert ledger.compute("wall_s") == 4.0


def test_token_units_weigh_backward_twice_and_skip_evaluation():
    ledger = CostLedger("m")
    ledger.add_tokens("generation", generated=100)
    ledger.add_tokens("training", forwarded=50, backpropagated=30)
    ledger.add_tokens("evaluation", generated=1000)
    assert ledger.totals() == {"generated": 100, "forwarded": 50, "backpropagated": 30}
    assert ledger.compute("tokens") == 100 + 50 + 2 * 30


def test_bad_phase_and_unit_are_named():
    ledger = CostLedger("m")
    with pytest.raises(ValueError, match="Unknown phase 'train'.*generation, scoring, training, evaluation"):
        ledger.add_tokens("train", generated=1)
    with pytest.raises(ValueError, match="Unknown compute unit 'flops'"):
        ledger.compute("flops")


def test_wrap_times_the_method_and_counts_its_generated_tokens():
    clock = FakeClock()
    ledger = CostLedger("m", clock=clock)

    class Trainer:
        def generate(self, n):
            clock.now += 2.0
            return [[0] * n, [0] * (n + 1)]

    trainer = Trainer()
    ledger.wrap(trainer, "generate", "generation", count_generated=lambda out: sum(map(len, out)))
    assert trainer.generate(3) == [[0] * 3, [0] * 4]
    trainer.generate(1)
    assert ledger.seconds["generation"] == 4.0
    assert ledger.tokens["generation"]["generated"] == 7 + 3


def test_forward_token_count_uses_the_attention_mask():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert forward_token_count(ids, torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])) == 8
    assert forward_token_count(ids, None) == 10
    with pytest.raises(ValueError, match="neither input_ids"):
        forward_token_count(None, None)


def test_forward_hook_counts_by_phase_and_gradient():
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    ledger = CostLedger("m")
    handle = ledger.count_forward_tokens(model)
    assert backbone(model) is model.model
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    model(input_ids=ids, attention_mask=mask)  # outside any phase: not counted
    with ledger.phase("training"):
        model(input_ids=ids, attention_mask=mask)  # policy forward with gradients
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)  # reference forward
    with ledger.phase("scoring"), torch.no_grad():
        model(input_ids=ids)
    with ledger.phase("generation"), torch.no_grad():
        model(input_ids=ids)  # decoding steps are counted as generated tokens, not here
    assert ledger.tokens["training"] == {"generated": 0, "forwarded": 14, "backpropagated": 7}
    assert ledger.tokens["scoring"] == {"generated": 0, "forwarded": 8, "backpropagated": 0}
    assert ledger.tokens["generation"]["forwarded"] == 0
    handle.remove()
    with ledger.phase("training"):
        model(input_ids=ids)
    assert ledger.tokens["training"]["forwarded"] == 14


def test_peak_memory_sees_a_new_allocation_after_reset():
    assert isinstance(reset_peak_memory("cpu"), bool)
    before, kind = peak_memory("cpu")
    assert kind in ("rss_peak", "ru_maxrss") and before > 0
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after, _ = peak_memory("cpu")
    assert after >= before + 48 * 2**20
    del block


def test_to_dict_is_complete():
    ledger = CostLedger("grpo", device="cpu")
    ledger.add_tokens("generation", generated=3)
    d = ledger.to_dict()
    assert d["method"] == "grpo" and d["token_totals"]["generated"] == 3
    assert set(d["seconds"]) == {"generation", "scoring", "training", "evaluation"}
    assert {"compute_wall_s", "compute_tokens", "peak_memory_bytes", "peak_memory_kind"} <= set(d)


def test_part_and_charge_carry_a_cost_measured_elsewhere():
    """The offline phase that filled a rollout cache is charged to the runs that reuse it (compare.py)."""
    clock = FakeClock()
    first = CostLedger("m", clock=clock)
    with first.phase("generation"):
        clock.now = 7.0
    first.add_tokens("generation", generated=120)
    first.add_tokens("scoring", forwarded=40)
    part = first.part(("generation", "scoring"))
    assert part == {
        "seconds": {"generation": 7.0, "scoring": 0.0},
        "tokens": {
            "generation": {"generated": 120, "forwarded": 0, "backpropagated": 0},
            "scoring": {"generated": 0, "forwarded": 40, "backpropagated": 0},
        },
    }
    reuser = CostLedger("m", clock=clock)
    reuser.add_tokens("training", forwarded=10, backpropagated=5)
    reuser.charge(part)
    assert reuser.compute("tokens") == 120 + 40 + 10 + 2 * 5 and reuser.compute("wall_s") == 7.0
    assert reuser.compute("tokens", ("training",)) == 20 and reuser.totals(("scoring",))["forwarded"] == 40
    with pytest.raises(ValueError, match="Unknown phase"):
        reuser.charge({"seconds": {"offline": 1.0}})


def test_wrap_calls_after_once_the_call_is_charged():
    class Engine:
        def generate(self, n):
            return [[0] * n]

    ledger, seen = CostLedger("m"), []
    engine = Engine()
    ledger.wrap(
        engine,
        "generate",
        "generation",
        count_generated=lambda out: len(out[0]),
        after=lambda: seen.append(ledger.totals()["generated"]),
    )
    engine.generate(3)
    engine.generate(2)
    assert seen == [3, 5]
