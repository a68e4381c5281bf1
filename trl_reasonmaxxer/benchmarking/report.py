"""The comparison's arithmetic and its report, without a model: disjoint splits, the (compute, gain) curves and
their first crossing, the headline ratio, seed pooling, GRPO's steps for a compute budget, the evidence aggregated
from the comparison's pieces (:func:`build_evidence`), its table and plots.

:mod:`.compare` runs the methods and writes their raw results as pieces (:mod:`.pieces`); everything here reads them.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence

from ..evaluation import mean_and_stderr
from ..plotting import new_figure, save_figure
from ..stats import average_seeds, describe, paired_difference, per_problem_scores, truncated_problems
from .ledger import COMPUTE_UNITS


def split_indices(
    num_rows: int, sizes: dict[str, int], seed: int = 0, tail: dict[str, int] | None = None
) -> dict[str, list[int]]:
    """Disjoint index lists of the requested ``sizes`` (name → count), drawn in order from the front of a seeded
    permutation of ``range(num_rows)``, and of ``tail`` from its end (so a part drawn there stays the same whatever
    is added at the front); each list is sorted."""
    tail = tail or {}
    parts = sizes | tail
    if len(parts) < len(sizes) + len(tail) or any(n < 1 for n in parts.values()) or sum(parts.values()) > num_rows:
        raise ValueError(
            f"Cannot split {num_rows} problems into {sizes} and {tail} from the end: every part needs a name of its "
            f"own, at least 1 problem, and together at most {num_rows}. Lower the sizes or use a larger dataset."
        )
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = sorted(order[start : start + n])
        start += n
    end = num_rows
    for name, n in tail.items():
        out[name] = sorted(order[end - n : end])
        end -= n
    return out


def first_crossing(curve: Sequence[tuple[float, float]], target: float, interpolate: bool = True) -> float | None:
    """Compute at which a ``(compute, gain)`` curve first reaches ``target``, or None if it never does.

    With ``interpolate``, linear interpolation between the last point below the target and the first point at or
    above it (an estimate: the gain between evaluations is unknown); without, that first point (an upper bound).
    """
    computes = [c for c, _ in curve]
    if any(b < a for a, b in zip(computes, computes[1:])):
        raise ValueError(f"The curve must be sorted by compute; got computes {computes}.")
    previous = None
    for c, g in curve:
        if g >= target:
            if previous is None or not interpolate:
                return c
            c0, g0 = previous
            return c0 + (target - g0) * (c - c0) / (g - g0)
        previous = (c, g)
    return None


def headline_ratio(grpo_curve: Sequence[tuple[float, float]], rm_gain: float, rm_compute: float, unit: str) -> dict:
    """GRPO compute to reach ReasonMaxxer's gain ÷ ReasonMaxxer compute.

    ``grpo_curve``: ``(compute, gain over base)`` points, starting with ``(0, 0)`` for the base model. Returns
    ``reached`` (None when ReasonMaxxer did not improve, so there is no gain to reach), the interpolated and the
    checkpoint crossing, ``ratio`` (interpolated), ``budget`` (GRPO's last compute), ``ratio_lower_bound`` when
    GRPO never reached it (budget ÷ ReasonMaxxer compute) and a one-line ``text``.
    """
    if rm_compute <= 0:
        raise ValueError(f"ReasonMaxxer's compute must be positive, got {rm_compute} {unit}.")
    if not grpo_curve:
        raise ValueError("The GRPO curve is empty: evaluate at least the base model and one checkpoint.")
    budget = grpo_curve[-1][0]
    out = {
        "unit": unit,
        "target_gain": rm_gain,
        "rm_compute": rm_compute,
        "grpo_budget": budget,
        "ratio": None,
        "grpo_compute": None,
        "grpo_compute_checkpoint": None,
        "ratio_lower_bound": None,
    }
    if rm_gain <= 0:
        out["reached"] = None
        out["text"] = (
            f"ReasonMaxxer did not improve on the base model (validation gain {rm_gain:+.3f}): no gain to reach, "
            "no ratio."
        )
        return out
    crossing = first_crossing(grpo_curve, rm_gain)
    if crossing is None:
        out["reached"] = False
        out["ratio_lower_bound"] = budget / rm_compute
        out["text"] = (
            f"GRPO never reached ReasonMaxxer's validation gain ({rm_gain:+.3f}) within budget B = {budget:.4g} "
            f"{unit}: ratio > {budget / rm_compute:.3g}."
        )
        return out
    checkpoint = first_crossing(grpo_curve, rm_gain, interpolate=False)
    out |= {
        "reached": True,
        "grpo_compute": crossing,
        "grpo_compute_checkpoint": checkpoint,
        "ratio": crossing / rm_compute,
    }
    out["text"] = (
        f"GRPO reached ReasonMaxxer's validation gain ({rm_gain:+.3f}) after {crossing:.4g} {unit} (interpolated; "
        f"first checkpoint at or above it: {checkpoint:.4g}); ReasonMaxxer used {rm_compute:.4g}: "
        f"ratio {crossing / rm_compute:.3g}."
    )
    return out


def mean_curve(curves: Sequence[Sequence[dict]], unit: str) -> list[tuple[float, float]]:
    """Seed-averaged ``(compute, gain)`` from per-seed curves of ``{"step", "compute": {unit: ...}, "gain"}``
    points, over the steps every seed evaluated."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve.")
    steps = sorted(set.intersection(*({p["step"] for p in c} for c in curves)))
    by_step = [{p["step"]: p for p in c} for c in curves]
    return [
        (sum(c[s]["compute"][unit] for c in by_step) / len(by_step), sum(c[s]["gain"] for c in by_step) / len(by_step))
        for s in steps
    ]


def pooled_metric(results: Sequence[dict], metric: str = "pass@1") -> tuple[float, float]:
    """Mean and stderr over problems of ``metric`` averaged over seeds (the problem is the unit of variance).

    ``results`` are :func:`~.evaluation.evaluate` outputs on the same problems; ``metric`` is ``pass@1`` (each
    problem's fraction of correct samples) or ``greedy_accuracy``.
    """
    per_problem: dict[str, list[float]] = {}
    for result in results:
        for r in result["records"]:
            if metric == "pass@1":
                value = r["num_correct"] / len(r["correct"])
            elif metric == "greedy_accuracy":
                value = float(r["greedy_correct"])
            else:
                raise ValueError(f"pooled_metric supports pass@1 and greedy_accuracy, not {metric!r}.")
            per_problem.setdefault(r["id"], []).append(value)
    return mean_and_stderr(sum(v) / len(v) for v in per_problem.values())


def eval_generated_tokens(summary: dict) -> int:
    """Tokens an :func:`~.evaluation.evaluate` call generated (sampled and greedy), from its summary."""
    n = summary["num_problems"]
    tokens = summary.get("mean_completion_tokens", 0.0) * n * summary["num_samples"]
    tokens += summary.get("greedy_mean_completion_tokens", 0.0) * n
    return round(tokens)


def mean_ledger(ledgers: Sequence[dict]) -> dict:
    """Seed-averaged seconds per phase, compute, token totals and the largest peak memory."""
    n = len(ledgers)
    first = ledgers[0]
    return {
        "seconds": {p: sum(lg["seconds"][p] for lg in ledgers) / n for p in first["seconds"]},
        "compute_wall_s": sum(lg["compute_wall_s"] for lg in ledgers) / n,
        "compute_tokens": sum(lg["compute_tokens"] for lg in ledgers) / n,
        "token_totals": {k: sum(lg["token_totals"][k] for lg in ledgers) / n for k in first["token_totals"]},
        "peak_memory_bytes": max((lg["peak_memory_bytes"] or 0) for lg in ledgers),
        "peak_memory_kind": first["peak_memory_kind"],
        "device": first["device"],
    }


def engines_used(per_seed: list[dict]) -> dict[str, str]:
    """Which engine each phase used (``{"rollouts": "llama.cpp", "evaluation": "transformers"}``) over the seeds;
    a phase whose engine differed between seeds lists them joined by " + "."""
    phases: dict[str, list[str]] = {}
    for engines in per_seed:
        for phase, engine in engines.items():
            if engine not in phases.setdefault(phase, []):
                phases[phase].append(engine)
    return {phase: " + ".join(names) for phase, names in phases.items()}


def plot_curve(
    curves: dict[str, list[tuple[float, float]]], points: dict[str, tuple[float, float]], path: str, unit: str
) -> str:
    """Validation gain vs compute: a line per curve (GRPO), a marker per single point (ReasonMaxxer)."""
    fig, ax = new_figure()
    for name, curve in curves.items():
        ax.plot([x for x, _ in curve], [y for _, y in curve], marker="o", label=name)
    for i, (name, (x, y)) in enumerate(points.items(), len(curves)):  # colours after the curves'
        ax.scatter([x], [y], marker="*", s=160, zorder=3, label=name, color=f"C{i}")
        ax.axhline(y, linestyle=":", color="grey", linewidth=1)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("compute (seconds)" if unit == "wall_s" else "compute (token units: gen + fwd + 2·bwd)")
    ax.set_ylabel("validation pass@1 gain over base")
    ax.legend()
    ax.set_title("Accuracy vs compute (validation set)")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------
# GRPO at a multiple of ReasonMaxxer's compute


def grpo_step_tokens(prompt_tokens: float, completion_tokens: float, completions_per_step: int) -> float:
    """Ledger tokens (generated + forwarded + 2 × back-propagated, :data:`.ledger.COMPUTE_UNITS`) of one GRPO
    optimiser step, from its rollout shape: each of the step's completions is generated (``completion_tokens``,
    1 unit each), then its prompt + completion go once through the policy with gradients (1 forward + 2 backward
    units). TRL's ``GRPOTrainer`` with its defaults (``beta=0``: no reference model; one iteration per generation:
    no old-log-prob forward) runs no other forward; the smoke test checks its own token counter against the
    ledger."""
    if completions_per_step < 1 or prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(
            f"Need completions_per_step >= 1 and non-negative lengths, got {completions_per_step}, {prompt_tokens}, "
            f"{completion_tokens}."
        )
    return completions_per_step * (completion_tokens + 3 * (prompt_tokens + completion_tokens))


def grpo_steps_for_budget(target_tokens: float, tokens_per_step: float) -> int:
    """GRPO's ``max_steps`` for a token budget: the fewest steps whose estimated compute reaches it (at least one),
    so rounding never gives GRPO less than the budget. The estimate comes from :func:`grpo_step_tokens`; the run
    records its realised compute beside the target."""
    if tokens_per_step <= 0:
        raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step}.")
    return max(1, math.ceil(target_tokens / tokens_per_step - 1e-9))


# ---------------------------------------------------------------------------------------------------------
# Evidence: the pieces of a comparison (pieces.py), aggregated


# the paired differences the evidence always lists (None until both sides have a piece)
REQUIRED_PAIRS = ("reasonmaxxer-base", "grpo_equal-base", "grpo_3x-base", "reasonmaxxer-grpo_equal")
# (evidence key, evaluation, metric) of the paired differences
PAIRED_KEYS = (
    ("paired", "test", "pass@1"),
    ("paired_greedy", "test", "greedy"),
    ("transfer", "transfer", "pass@1"),
    ("transfer_greedy", "transfer", "greedy"),
)
MAX_BASE_TRUNCATION = 0.10


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _method_row(method: str, pieces: list[dict]) -> dict:
    """A method's line of the evidence: pooled test (and transfer) metrics, mean compute, ledger and engines."""
    row = {"seeds": [p["seed"] for p in pieces if p.get("seed") is not None]}
    for prefix, split in (("", "test"), ("transfer_", "transfer")):
        if all(split in p for p in pieces):
            results = [p[split] for p in pieces]
            row[f"{prefix}pass@1"], row[f"{prefix}pass@1_stderr"] = pooled_metric(results)
            row[f"{prefix}greedy"], row[f"{prefix}greedy_stderr"] = pooled_metric(results, "greedy_accuracy")
    trained = method != "base"
    for unit in COMPUTE_UNITS:
        row[f"compute_{unit}"] = _mean(p["compute"][unit] for p in pieces) if trained else 0.0
    row["ledger"] = mean_ledger([p["ledger"] for p in pieces]) if trained else None
    row["engines"] = engines_used([p.get("engines", {}) for p in pieces])
    return row


def _paired(
    by_method: dict[str, list[dict]],
    a: str,
    b: str,
    split: str,
    metric: str,
    num_resamples: int,
    only: set[str] | None = None,
):
    """``a − b`` per problem on ``split`` (seeds averaged per problem; only the problems of ``only`` when given), with
    its paired bootstrap CI; None when a side has no piece with that evaluation or no problem is kept. Two trained
    methods are compared on the seeds both have: a training seed moves a result as much as a method does
    (``per_seed``), so one side's extra seeds would pass for a difference between the methods."""
    sides = [by_method.get(a, []), by_method.get(b, [])]
    if "base" not in (a, b):
        shared = {p["seed"] for p in sides[0]} & {p["seed"] for p in sides[1]}
        sides = [[p for p in pieces if p["seed"] in shared] for pieces in sides]
    if not all(pieces and all(split in p for p in pieces) for pieces in sides):
        return None
    treatment, control = (average_seeds([per_problem_scores(p[split], metric) for p in ps]) for ps in sides)
    treatment = {pid: score for pid, score in treatment.items() if only is None or pid in only}
    if not treatment:
        return None
    diff = paired_difference(treatment, control, num_resamples=num_resamples, seed=0)
    return diff | {"seeds": {m: [p["seed"] for p in ps] for m, ps in zip((a, b), sides)}}


def _method_of(name: str) -> str:
    return name.rsplit("-seed", 1)[0]


def build_evidence(
    pieces: Mapping[str, dict], expected: Sequence[str] = (), commit: str = "unknown", num_resamples: int = 10_000
) -> dict:
    """The comparison's evidence (``evidence.json``) from its pieces (``name → piece``, :mod:`.pieces`), without a
    model; whatever pieces exist, the ones of ``expected`` that do not are listed in ``missing``.

    - ``methods``: per method, test pass@1 and greedy (seeds averaged per problem, then mean ± stderr over
      problems), the same on the transfer task, and the mean compute over seeds in tokens and seconds.
    - ``paired`` (test pass@1), ``paired_greedy``, ``transfer`` (transfer pass@1), ``transfer_greedy``: every
      method − base, reasonmaxxer − every GRPO method and every gate ablation (``reasonmaxxer_random``...: the
      entropy gate against the other gates), and every larger GRPO budget − ``grpo_equal`` (``grpo_3x-grpo_equal``:
      what more compute buys GRPO); two trained methods on the seeds both have; per problem with seeds averaged per
      problem, then the paired bootstrap over problems (:func:`~trl_reasonmaxxer.stats.paired_difference`:
      ``mean``, ``ci95``...); None while a side has no piece. :data:`REQUIRED_PAIRS` are always listed.
    - ``per_seed``: every trained piece (``reasonmaxxer-seed1``...) alone − base, under the same four keys: how much
      the training seed moves the result, which the pooled intervals (over problems) leave out.
    - ``by_base_truncation``: every method − base under the four keys, on the problems where one of the base's
      samples hit the token budget (``truncated``) and on the others (``finished``), with ``n`` of each per split: a
      gain made only where the base ran out of tokens is a length effect, not better reasoning.
    - ``headline`` (token unit) and ``headline_by_unit``: :func:`headline_ratio` of ReasonMaxxer's mean validation
      gain over the base against the seed-averaged validation curve of the GRPO method with the most compute.
    - ``fork_choice`` (ReasonMaxxer's sweep and choice per seed), ``grpo_budget`` (GRPO's steps per seed),
      ``truncation`` (the base model's, to check the token budget), ``warnings``, ``piece_commits``, ``commit``
      (the aggregating checkout's) and the ``settings`` the pieces share.
    """
    by_method: dict[str, list[dict]] = {}
    for piece in sorted(pieces.values(), key=lambda p: (p["method"], -1 if p.get("seed") is None else p["seed"])):
        by_method.setdefault(piece["method"], []).append(piece)
    order = list(dict.fromkeys(["base", *map(_method_of, expected), *sorted(by_method)]))
    base = pieces.get("base")
    # the trained pieces' settings: the base model's piece only shares their evaluation settings (pieces.py)
    settings = next((p["settings"] for p in pieces.values() if p["method"] != "base"), base and base["settings"]) or {}
    methods = {m: _method_row(m, by_method[m]) for m in order if by_method.get(m)}
    grpo = [m for m in order if m.startswith("grpo")]
    ablations = [m for m in order if m.startswith("reasonmaxxer_")]
    pairs = [(m, "base") for m in order if m != "base"] + [("reasonmaxxer", m) for m in grpo + ablations]
    # what more compute buys GRPO: each larger budget against the equal one
    pairs += [(m, "grpo_equal") for m in grpo if "grpo_equal" in grpo and m != "grpo_equal"]
    out: dict = {
        "task": settings.get("dataset_name"),
        "model": settings.get("model"),
        "n_test_problems": base["test"]["summary"]["num_problems"] if base else settings.get("num_test_problems"),
        "samples_per_problem": settings.get("num_samples"),
        "greedy": True,
        "prompt_style": settings.get("prompt_style"),
        "max_completion_length": settings.get("max_completion_length"),
        "transfer_task": settings.get("transfer_dataset_name") if settings.get("num_transfer_problems") else None,
        "n_transfer_problems": settings.get("num_transfer_problems") or 0,
        "seeds": sorted({p["seed"] for p in pieces.values() if p.get("seed") is not None}),
        "methods": methods,
    }
    for key, split, metric in PAIRED_KEYS:
        out[key] = {f"{a}-{b}": _paired(by_method, a, b, split, metric, num_resamples) for a, b in pairs}
        for name in REQUIRED_PAIRS:
            out[key].setdefault(name, None)

    # each trained piece alone against the base: the spread over training seeds, which the pooled CIs (over
    # problems, seeds averaged per problem) do not show
    out["per_seed"] = {
        name: {
            key: _paired(
                {p["method"]: [p], "base": by_method.get("base", [])}, p["method"], "base", *how, num_resamples
            )
            for key, *how in PAIRED_KEYS
        }
        for name, p in sorted(pieces.items())
        if p["method"] != "base"
    }
    out["by_base_truncation"] = _by_base_truncation(by_method, pairs, num_resamples)
    rm, curved = by_method.get("reasonmaxxer", []), [m for m in grpo if by_method.get(m)]
    out["headline"], out["headline_by_unit"], out["validation"], out["curves"] = None, {}, None, {}
    if base:
        base_val = base["validation"]["summary"]["pass@1"]
        out["validation"] = {"base": base_val}
        if rm:
            rm_val = _mean(p["validation"]["summary"]["pass@1"] for p in rm)
            rm_compute = {u: _mean(p["compute"][u] for p in rm) for u in COMPUTE_UNITS}
            out["validation"] |= {"reasonmaxxer": rm_val, "gain": rm_val - base_val, "compute": rm_compute}
        out["curves"] = {
            m: {u: mean_curve([p["validation_curve"] for p in by_method[m]], u) for u in COMPUTE_UNITS} for m in curved
        }
        if rm and curved:
            # the GRPO run with the most compute: the longest curve, so the highest budget B for the lower bound
            longest = max(curved, key=lambda m: methods[m]["compute_tokens"])
            out["headline_by_unit"] = {
                u: headline_ratio(out["curves"][longest][u], rm_val - base_val, rm_compute[u], u)
                | {"grpo_method": longest}
                for u in COMPUTE_UNITS
            }
            out["headline"] = out["headline_by_unit"]["tokens"]
    out["fork_choice"] = {
        str(p["seed"]): {
            "fork": p.get("fork_choice"),
            "sweep": p.get("fork_sweep"),
            "sweep_compute": p.get("sweep_compute"),
        }
        for p in rm
    }
    out["grpo_budget"] = {
        m: {str(p["seed"]): p["grpo_budget"] for p in by_method.get(m, []) if p.get("grpo_budget")} for m in grpo
    }
    out["truncation"] = {
        f"base_{split}{suffix}": base[split]["summary"].get(f"{prefix}truncation_rate")
        for split in ("test", "transfer")
        if base and split in base
        for prefix, suffix in (("", ""), ("greedy_", "_greedy"))
    }
    out["warnings"] = _warnings(pieces, out)
    out["missing"] = [name for name in expected if name not in pieces]
    out["pieces"] = sorted(pieces)
    out["piece_commits"] = {name: p.get("commit", "unknown") for name, p in sorted(pieces.items())}
    out["commit"] = commit
    ledgers = [p["ledger"] for p in pieces.values() if p.get("ledger")]
    out["device"] = ledgers[0].get("device") if ledgers else None
    out["settings"] = settings
    return out


def _by_base_truncation(by_method: dict[str, list[dict]], pairs, num_resamples: int) -> dict:
    """The method − base pairs split by whether the base truncated a sample of the problem (``build_evidence``)."""
    base = (by_method.get("base") or [None])[0]
    subsets = {}
    for split in ("test", "transfer") if base else ():
        if split not in base:
            continue
        try:
            truncated = truncated_problems(base[split])
        except ValueError:  # evaluated without samples: no truncation per problem, nothing to split
            continue
        subsets[split] = {
            "truncated": truncated,
            "finished": {str(r["id"]) for r in base[split]["records"]} - truncated,
        }
    out = {"n": {split: {side: len(ids) for side, ids in sides.items()} for split, sides in subsets.items()}}
    for side in ("truncated", "finished"):
        out[side] = {
            key: {
                f"{a}-base": _paired(by_method, a, "base", split, metric, num_resamples, subsets[split][side])
                for a, b in pairs
                if b == "base"
            }
            for key, split, metric in PAIRED_KEYS
            if split in subsets
        }
    return out


def _warnings(pieces: Mapping[str, dict], evidence: dict) -> list[str]:
    """What a reader of the evidence must know: a token budget that truncates the base model, evaluations on
    different engines, a ReasonMaxxer cost that misses its offline phase, a GRPO budget missed by its estimate."""
    out = []
    for key, rate in evidence["truncation"].items():
        if key.startswith("base_test") and rate is not None and rate > MAX_BASE_TRUNCATION:
            out.append(
                f"{rate:.0%} of the base model's held-out answers ({key}) hit the {evidence['max_completion_length']}-"
                f"token budget (more than {MAX_BASE_TRUNCATION:.0%}): raise max_completion_length."
            )
    engines = {p.get("engines", {}).get("evaluation") for p in pieces.values()} - {None}
    if len(engines) > 1:
        out.append(f"The pieces were evaluated on different engines ({', '.join(sorted(engines))}).")
    for name, p in sorted(pieces.items()):
        if (p.get("ledger") or {}).get("offline_cost_unknown"):
            out.append(f"{name}: its rollouts came from a cache whose cost was never recorded; its compute misses it.")
        ratio = (p.get("grpo_budget") or {}).get("realized_over_target")
        if ratio is not None and not 0.8 <= ratio <= 1.25:
            out.append(f"{name}: GRPO's realised compute is {ratio:.2f}× its target (the step estimate was off).")
    return out


def format_table(evidence: dict) -> str:
    """The evidence as plain text: per method held-out pass@1, greedy, transfer and cost; the paired differences,
    the fork choice, the headline, missing pieces and warnings."""
    e, s = evidence, evidence["settings"]
    k, transfer = e["samples_per_problem"], e["transfer_task"]
    lines = [
        f"GRPO vs ReasonMaxxer: {e['model']} on {e['task']}; pool {s.get('num_pool_problems')} / validation "
        f"{s.get('num_validation_problems')} / held-out test {e['n_test_problems']} problems × {k} samples + greedy "
        f"(T=0.6, top-p 0.95); {e['prompt_style']} prompt, {e['max_completion_length']} tokens"
        + (f"; transfer {transfer} {e['n_transfer_problems']}" if transfer else "")
        + f"; {len(e['seeds'])} seed(s) {e['seeds']}; {e['device']}",
        f"{'method':<22}{'test pass@1 (k=' + str(k) + ')':>20}{'greedy':>16}"
        + (f"{'transfer pass@1':>17}{'greedy':>16}" if transfer else "")
        + f"{'compute s':>11}{'tokens':>10}{'gen tok':>9}{'fwd tok':>9}{'bwd tok':>9}{'peak GB':>9}",
    ]
    show = lambda row, key: f"{row[key]:.3f} ± {row[key + '_stderr']:.3f}" if key in row else "—"
    for name, row in e["methods"].items():
        ledger = row.get("ledger")
        cost = (
            f"{row['compute_wall_s']:>11.0f}{row['compute_tokens']:>10.0f}{ledger['token_totals']['generated']:>9.0f}"
            f"{ledger['token_totals']['forwarded']:>9.0f}{ledger['token_totals']['backpropagated']:>9.0f}"
            f"{(ledger['peak_memory_bytes'] or 0) / 1e9:>9.2f}"
            if ledger
            else f"{'—':>11}{'—':>10}{'—':>9}{'—':>9}{'—':>9}{'—':>9}"
        )
        transfer_cells = f"{show(row, 'transfer_pass@1'):>17}{show(row, 'transfer_greedy'):>16}" if transfer else ""
        lines.append(f"{name:<22}{show(row, 'pass@1'):>20}{show(row, 'greedy'):>16}{transfer_cells}{cost}")
    engines = [
        f"{name} " + ", ".join(f"{phase} {engine}" for phase, engine in row["engines"].items())
        for name, row in e["methods"].items()
        if row.get("engines")
    ]
    if engines:
        lines.append("engines: " + "; ".join(engines))
    titles = {
        "paired": "test pass@1",
        "paired_greedy": "test greedy",
        "transfer": f"{transfer} pass@1",
        "transfer_greedy": f"{transfer} greedy",
    }
    for key, title in titles.items():
        diffs = {name: d for name, d in e[key].items() if d}
        if diffs:
            lines.append(f"paired differences, {title} (seeds averaged per problem; paired bootstrap over problems):")
            lines += [f"  {describe(d, name)}" for name, d in diffs.items()]
    for key in ("paired", "paired_greedy"):
        cells = [
            f"{name} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            for name, diffs in e.get("per_seed", {}).items()
            if (d := diffs[key])
        ]
        if cells:
            lines.append(f"per seed, {titles[key]} − base: " + "; ".join(cells))
    split_of = {key: split for key, split, _ in PAIRED_KEYS}
    by_cut = e.get("by_base_truncation", {})
    for key, title in titles.items():
        cells = [
            f"{name.removesuffix('-base')} {side} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            for side in ("truncated", "finished")
            for name, d in by_cut.get(side, {}).get(key, {}).items()
            if d
        ]
        if cells:
            n = by_cut["n"][split_of[key]]
            lines.append(
                f"{title} − base, where a base sample hit the token budget ({n['truncated']} problems) and where "
                f"none did ({n['finished']}): " + "; ".join(cells)
            )
    for seed, fork in e["fork_choice"].items():
        candidates = fork["sweep"] or []
        sweep = ", ".join(f"{_fork_label(c['fork'])} {c['validation_pass@1']:.3f}" for c in candidates)
        sweep = sweep if len(candidates) > 1 else ""
        lines.append(
            f"fork choice, seed {seed}: {_fork_label(fork['fork'])}" + (f" (validation: {sweep})" if sweep else "")
        )
    for unit, headline in e["headline_by_unit"].items():
        lines.append(f"headline ({unit}, {headline['grpo_method']}'s curve): {headline['text']}")
    if e["missing"]:
        lines.append(f"missing pieces ({len(e['missing'])}): {', '.join(e['missing'])}")
    lines += [f"warning: {w}" for w in e["warnings"]]
    return "\n".join(lines)


def _fork_label(fork: Mapping | None) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in fork.items()) if fork else "the trainer's default gate"


def paired_rows(evidence: dict) -> list[tuple[str, str, dict | None, dict | None]]:
    """``(label, evaluation, sampled, greedy)`` for every pair with a difference in either metric, test pairs first:
    the rows of :func:`plot_paired`."""
    rows = []
    for evaluation, sampled_key, greedy_key in (
        ("test", "paired", "paired_greedy"),
        ("transfer", "transfer", "transfer_greedy"),
    ):
        for name, sampled in evidence[sampled_key].items():
            greedy = evidence[greedy_key].get(name)
            if sampled or greedy:
                rows.append((f"{name} ({evaluation})", evaluation, sampled, greedy))
    return rows


def plot_paired(evidence: dict, path: str) -> str:
    """The paired differences with their 95% CIs, one row a pair: sampled pass@1 on the left, greedy accuracy on
    the right, on one scale."""
    tasks = {
        "test": os.path.basename(str(evidence["task"])),
        "transfer": os.path.basename(str(evidence["transfer_task"])),
    }
    rows = paired_rows(evidence)
    fig, panels = new_figure(width=10.0, height=max(2.5, 1.2 + 0.4 * len(rows)), ncols=2, sharex=True, sharey=True)
    for ax, column, metric in zip(panels, (2, 3), ("sampled pass@1", "greedy accuracy")):
        for i, row in enumerate(rows):
            d = row[column]
            if d is None:
                continue
            lo, hi = d["ci95"]
            err = [[max(d["mean"] - lo, 0.0)], [max(hi - d["mean"], 0.0)]]
            ax.errorbar([d["mean"]], [i], xerr=err, fmt="o", capsize=4, color="C0" if row[1] == "test" else "C1")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{metric} difference")
    panels[0].set_yticks(range(len(rows)), [row[0] for row in rows])
    panels[0].invert_yaxis()
    title = f"Paired differences, 95% bootstrap CIs: test = {tasks['test']}" + (
        f", transfer = {tasks['transfer']}" if evidence["transfer_task"] else ""
    )
    fig.suptitle(title if rows else "Paired differences: no pair has both pieces yet")
    return save_figure(fig, path)
