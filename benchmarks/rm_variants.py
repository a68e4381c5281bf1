"""Why does ReasonMaxxer gain, or not? Variants of its training, on validation only (the test set is never touched).

Each variant is a set of ``ReasonMaxxerConfig`` overrides (learning rate, β, the loss, ``neg_prob_floor``, epochs...)
trained at one fork setting on a seed's cached pool of a comparison (``trl-reasonmaxxer compare``: same model, data,
splits, rollouts), scored on that comparison's validation set and paired per problem with the base model's piece
(bootstrap 95% CI). ``recipe`` is the comparison's own training (reused when the sweep already trained it). Also
reported, from each training's log: the mean change of log-probability of the fork tokens of positive and negative
rollouts under training (``dlogp_pos``, ``dlogp_neg``), the KL anchor and, with ``neg_prob_floor``, the share of
negative fork tokens the floor exempted (``floored``: does it act at all?).

    python benchmarks/rm_variants.py --config examples/recipes/evidence.yaml --output_dir runs/evidence \\
        --pieces_dir docs/results/pieces --fork_threshold 1.4 \\
        --variants recipe learning_rate=5e-5 neg_prob_floor=0.05 beta=1.0 loss_type=adv_ratio

``--extra_pool_problems N`` trains every variant on a larger pool (the comparison's plus N problems of its training
split, disjoint from validation and test), ``--fit true`` adds the in-sample check on the comparison's pool, and
``--diagnosis_problems N`` scores every variant and the base on N more held-out training-split problems with the test
protocol (samples and greedy): validation's 60 × 2 samples cannot resolve the ±0.05 greedy effects seen on test.
``--reference_pieces`` scores finished pieces' adapters there too, and pairs every other row with the first of them
(``greedy vs ref``: a variant against GRPO's adapter on the same problems).

Resumable: every variant's training is kept beside its adapter (``<output_dir>/seed<S>/reasonmaxxer-<label>/``) and
reused. Writes ``--out`` (docs/results/rm_variants.json) at the end, and prints a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_reasonmaxxer.benchmarking.compare import CompareConfig, validate_variants
from trl_reasonmaxxer.benchmarking.pieces import git_commit
from trl_reasonmaxxer.evaluation import save_results
from trl_reasonmaxxer.rewards import resolve_reward_func
from trl_reasonmaxxer.scripts.compare import CompareScriptArguments
from trl_reasonmaxxer.scripts.parser import ScriptParser


RECIPE = "recipe"


@dataclass
class VariantArguments:
    """
    Parameters:
        variants (`list[str]`):
            `recipe` (the comparison's training) or `key=value[,key=value...]` of `ReasonMaxxerConfig` fields.
        fork_threshold (`float` or `None`, *optional*):
            The fork setting every variant trains at (give this or `fork_fraction`).
        fork_fraction (`float` or `None`, *optional*):
            The fork setting as a share of gated tokens.
        seed (`int`, *optional*, defaults to `0`):
            The training seed, whose cached pool the variants share.
        out (`str`, *optional*, defaults to `"docs/results/rm_variants.json"`):
            Where the table's JSON goes.
        fit (`bool`, *optional*, defaults to `False`):
            Also score every variant and the base on the pool's own problems (in-sample, paired): did the variant
            learn what it trained on?
        extra_pool_problems (`int`, *optional*, defaults to `0`):
            Train every variant on a larger pool: the comparison's plus this many more problems of its training
            split (disjoint from validation and test; their rollouts are sampled once and cached). Does a larger
            pool carry over to validation?
        diagnosis_problems (`int`, *optional*, defaults to `0`):
            Also score every variant and the base on this many more problems of the training split (from the end of
            its permutation: disjoint from pool, extra pool, validation and test) with the test protocol, samples
            and a greedy completion, paired per problem: a held-out set large enough for greedy effects.
        reference_pieces (`list[str]`, *optional*, defaults to `[]`):
            Finished pieces of the comparison (`grpo_equal-seed0`, `reasonmaxxer_all-seed0`...) whose adapters are
            scored on the diagnosis set too (needs `diagnosis_problems`): the yardstick for the variants.
    """

    variants: list[str] = field(default_factory=lambda: [RECIPE], metadata={"help": "recipe or key=value,..."})
    fork_threshold: float | None = field(default=None, metadata={"help": "The fork threshold τ of every variant."})
    fork_fraction: float | None = field(default=None, metadata={"help": "Or the fork setting as a gated share."})
    seed: int = field(default=0, metadata={"help": "Training seed (its cached pool is shared)."})
    out: str = field(default="docs/results/rm_variants.json", metadata={"help": "The JSON written."})
    fit: bool = field(default=False, metadata={"help": "Also score the pool's own problems (in-sample)."})
    extra_pool_problems: int = field(default=0, metadata={"help": "Problems added to the pool of every variant."})
    diagnosis_problems: int = field(
        default=0, metadata={"help": "Held-out training-split problems scored with samples and greedy."}
    )
    reference_pieces: list[str] = field(
        default_factory=list, metadata={"help": "Finished pieces whose adapters are scored on the diagnosis set too."}
    )


def parse_variant(text: str) -> dict:
    """``"recipe"`` → ``{}``; ``"learning_rate=5e-5,neg_prob_floor=0.05"`` → ``{"learning_rate": 5e-05, ...}`` (values
    read as JSON where they parse: numbers, true/false, null; else kept as strings)."""
    if text == RECIPE:
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Variant {text!r}: write `{RECIPE}` or key=value[,key=value...] (got {item!r}).")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def fork_setting(args: VariantArguments) -> dict:
    given = {k: v for k, v in (("fork_threshold", args.fork_threshold), ("fork_fraction", args.fork_fraction)) if v}
    if len(given) != 1:
        raise ValueError("Give the fork setting every variant trains at: --fork_threshold or --fork_fraction.")
    return given


def format_table(results: dict) -> str:
    fit = any("fit" in r for r in results.values())
    diagnosis = any("diagnosis" in r for r in results.values())
    versus = next(
        (r["diagnosis"]["vs_reference"]["name"] for r in results.values() if "vs_reference" in r.get("diagnosis", {})),
        None,
    )
    lines = [
        f"{'variant':<40}{'validation':>11}{'vs base (95% CI)':>28}{'+/-':>8}"
        + (f"{'pool':>7}{'pool vs base (95% CI)':>28}" if fit else "")
        + (f"{'diag':>7}{'diag vs base':>28}{'greedy':>8}{'greedy vs base':>28}" if diagnosis else "")
        + (f"{'greedy vs ref':>28}" if versus else "")
        + f"{'forks':>8}{'dlogp+':>9}{'dlogp-':>9}{'kl':>9}{'floored':>9}"
    ]

    def show(value, spec):
        return "-" if value is None else format(value, spec)

    def paired(p):
        return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"

    def diag(r):
        d = r["diagnosis"]
        line = f"{d['pass@1']:>7.3f}{paired(d['paired']):>28}{d['greedy']:>8.3f}{paired(d['paired_greedy']):>28}"
        if versus:
            line += f"{paired(d['vs_reference']['paired_greedy']) if 'vs_reference' in d else '-':>28}"
        return line

    for name, r in results.items():
        if r.get("reference"):  # a finished piece's adapter: the diagnosis set only
            blank_pool = f"{'-':>35}" if fit else ""
            lines.append(f"{'piece ' + name:<40}{'-':>11}{'-':>28}{'':>8}{blank_pool}{diag(r)}")
            continue
        p = r["paired"]
        pool = f"{r['fit']['pass@1']:>7.3f}{paired(r['fit']['paired']):>28}" if fit else ""
        if diagnosis:
            pool += diag(r)
        lines.append(
            f"{name:<40}{r['validation']:>11.3f}{paired(p):>28}{p['better']:>4}/{p['worse']:<3}{pool}"
            f"{show(r['fork_fraction'], '.1%'):>8}{show(r['dlogp_pos'], '+.3f'):>9}{show(r['dlogp_neg'], '+.3f'):>9}"
            f"{show(r['kl'], '.4f'):>9}{show(r.get('neg_floored'), '.2%'):>9}"
        )
    first = next(iter(results.values()))
    lines.append(f"trained on a pool of {first['pool_problems']} problems ({first['mixed_problems']} mixed)")
    if fit:
        lines.append(
            f"pool: the pool's {first['fit']['paired']['n']} problems (its mixed ones trained on), "
            f"base {first['fit']['base']:.3f}"
        )
    if diagnosis:
        d = first["diagnosis"]
        lines.append(
            f"diag: {d['paired']['n']} held-out training-split problems × samples + greedy, "
            f"base {d['base']:.3f} sampled, {d['base_greedy']:.3f} greedy"
        )
    if versus:
        lines.append(f"greedy vs ref: paired with the reference piece {versus} on the diagnosis set")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = ScriptParser(
        (CompareScriptArguments, CompareConfig, VariantArguments), description=__doc__.split("\n")[0]
    )
    script_args, budget, args = parser.parse_args_and_config(argv)
    variants = {name: parse_variant(name) for name in args.variants}
    results = validate_variants(
        variants,
        fork_setting(args),
        seed=args.seed,
        output_dir=script_args.output_dir,
        model=script_args.model_name_or_path,
        dataset_name=script_args.dataset_name,
        budget=budget,
        reward_fn=resolve_reward_func(script_args.reward_func),
        split_seed=script_args.split_seed,
        pieces_dir=script_args.pieces_dir,
        fit=args.fit,
        extra_pool_problems=args.extra_pool_problems,
        diagnosis_problems=args.diagnosis_problems,
        reference_pieces=args.reference_pieces,
    )
    report = {"commit": git_commit(), "seed": args.seed, "fork": fork_setting(args), "variants": results}
    save_results(report | {"budget": asdict(budget)}, args.out)
    print(format_table(results))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
