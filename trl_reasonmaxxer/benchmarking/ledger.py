"""A cost ledger for benchmarks: wall seconds per phase, tokens generated / forwarded / back-propagated, peak memory.

Phases nest and time is *exclusive*: while ``scoring`` runs a nested ``generation``, the seconds go to
``generation`` only, so the phases of one method add up to its wall time. ``evaluation`` is measurement, not the
method's cost, and is left out of :meth:`CostLedger.compute`.

Token counts:

- *generated*: completion tokens sampled (EOS included), counted from the generation call's output;
- *forwarded*: tokens (attention-mask ones) through teacher-forced forward passes of the model, counted by a
  pre-hook on its backbone, outside generation and evaluation (decoding steps are counted as *generated*);
- *back-propagated*: the subset of *forwarded* run with gradients enabled.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


PHASES = ("generation", "scoring", "training", "evaluation")
COMPUTE_PHASES = ("generation", "scoring", "training")
TOKEN_KINDS = ("generated", "forwarded", "backpropagated")
# Units of an accuracy-vs-compute curve. "tokens" is a FLOP proxy: a forward costs ~1 unit per token (generated
# or teacher-forced), a backward ~2 more.
COMPUTE_UNITS = ("wall_s", "tokens")


def _zero_tokens() -> dict[str, dict[str, int]]:
    return {p: dict.fromkeys(TOKEN_KINDS, 0) for p in PHASES}


@dataclass
class CostLedger:
    """What one method cost. Use :meth:`phase` around work, :meth:`wrap` on methods, :meth:`count_forward_tokens`
    on the model; ``clock`` is injectable for tests."""

    method: str
    device: str = "cpu"
    clock: Callable[[], float] = time.perf_counter
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    tokens: dict[str, dict[str, int]] = field(default_factory=_zero_tokens)
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self._stack: list[str] = []
        self._last = 0.0

    @property
    def current_phase(self) -> str | None:
        return self._stack[-1] if self._stack else None

    def _charge(self) -> None:
        now = self.clock()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._last
        self._last = now

    @contextlib.contextmanager
    def phase(self, name: str):
        """Charge the wall time inside the block to ``name`` (minus nested phases)."""
        _check_phase(name)
        self._charge()
        self._stack.append(name)
        try:
            yield self
        finally:
            self._charge()
            self._stack.pop()

    def add_tokens(self, phase: str, generated: int = 0, forwarded: int = 0, backpropagated: int = 0) -> None:
        _check_phase(phase)
        for kind, n in zip(TOKEN_KINDS, (generated, forwarded, backpropagated)):
            self.tokens[phase][kind] += int(n)

    def wrap(
        self, obj, name: str, phase: str, count_generated: Callable | None = None, after: Callable | None = None
    ) -> None:
        """Replace ``obj.name`` (a method) by one that runs in ``phase``; ``count_generated(output)`` gives the
        tokens that call generated; ``after()`` runs once the call is charged (e.g. to save the ledger)."""
        _check_phase(phase)
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            with self.phase(phase):
                out = original(*args, **kwargs)
            if count_generated is not None:
                self.add_tokens(phase, generated=count_generated(out))
            if after is not None:
                after()
            return out

        setattr(obj, name, wrapped)

    def count_forward_tokens(self, model) -> torch.utils.hooks.RemovableHandle:
        """Count the tokens of every forward of ``model``'s backbone during scoring and training."""

        def hook(module, args, kwargs):
            phase = self.current_phase
            if phase not in ("scoring", "training"):
                return
            n = forward_token_count(kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask"))
            self.add_tokens(phase, forwarded=n, backpropagated=n if torch.is_grad_enabled() else 0)

        return backbone(model).register_forward_pre_hook(hook, with_kwargs=True)

    def start_memory(self) -> None:
        """Reset the peak-memory counter, so :meth:`finish_memory` reports this method's peak."""
        self.extra["peak_memory_reset"] = reset_peak_memory(self.device)

    def finish_memory(self) -> None:
        self.peak_memory_bytes, self.peak_memory_kind = peak_memory(self.device)

    def compute(self, unit: str = "wall_s", phases: Sequence[str] = COMPUTE_PHASES) -> float:
        """The method's cost so far (evaluation excluded) in ``unit`` (see :data:`COMPUTE_UNITS`), including the
        running phase up to now; ``phases`` narrows it (``("training",)``: the training alone)."""
        self._charge()
        if unit == "wall_s":
            return sum(self.seconds[p] for p in phases)
        if unit == "tokens":
            t = self.totals(phases)
            return float(t["generated"] + t["forwarded"] + 2 * t["backpropagated"])
        raise ValueError(f"Unknown compute unit {unit!r}; choose one of {', '.join(COMPUTE_UNITS)}.")

    def totals(self, phases: Sequence[str] = COMPUTE_PHASES) -> dict[str, int]:
        """Tokens of each kind summed over ``phases`` (the compute phases)."""
        return {k: sum(self.tokens[p][k] for p in phases) for k in TOKEN_KINDS}

    def part(self, phases: Sequence[str]) -> dict:
        """Seconds and tokens of ``phases`` so far, ``{"seconds": {phase: s}, "tokens": {phase: {kind: n}}}``: what
        :meth:`charge` adds to another ledger."""
        self._charge()
        return {"seconds": {p: self.seconds[p] for p in phases}, "tokens": {p: dict(self.tokens[p]) for p in phases}}

    def charge(self, part: dict) -> None:
        """Add a :meth:`part` measured elsewhere (e.g. by the earlier run that filled a rollout cache this run
        reuses) to this ledger's phases."""
        for phase, seconds in part.get("seconds", {}).items():
            _check_phase(phase)
            self.seconds[phase] += seconds
        for phase, counts in part.get("tokens", {}).items():
            self.add_tokens(phase, **counts)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "device": self.device,
            "seconds": dict(self.seconds),
            "compute_wall_s": self.compute("wall_s"),
            "compute_tokens": self.compute("tokens"),
            "tokens": {p: dict(v) for p, v in self.tokens.items()},
            "token_totals": self.totals(),
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            **self.extra,
        }


def _check_phase(name: str) -> None:
    if name not in PHASES:
        raise ValueError(f"Unknown phase {name!r}; the ledger's phases are {', '.join(PHASES)}.")


def forward_token_count(input_ids, attention_mask) -> int:
    """Real (unpadded) tokens of one forward: the ones of a 2-D attention mask, else every input position."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return int(attention_mask.sum())
    if input_ids is None:
        raise ValueError("Cannot count tokens of a forward with neither input_ids nor a 2-D attention_mask.")
    return input_ids.numel()


def backbone(model) -> torch.nn.Module:
    """The transformer body under a causal LM (PEFT-wrapped or not): called once per forward, also by TRL's fused
    LM head, and never re-entered by the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def reset_peak_memory(device: str) -> bool:
    """Reset the peak counter: CUDA's allocator stats, or the kernel's RSS high-water mark (Linux ``clear_refs``).
    Returns False when it cannot be reset (the peak then covers the whole process so far)."""
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5 = reset the peak RSS (VmHWM), see proc(5)
        return True
    except OSError:
        return False


def peak_memory(device: str) -> tuple[int, str]:
    """``(bytes, kind)``: ``torch.cuda.max_memory_allocated`` on a GPU; on CPU the peak RSS (VmHWM, resettable),
    else ``ru_maxrss`` (the process's lifetime peak)."""
    if device != "cpu":
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "rss_peak"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "ru_maxrss"
