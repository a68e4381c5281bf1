"""GRPO (TRL's own ``GRPOTrainer``) vs ReasonMaxxer on the same model, data, LoRA, reward and evaluation.

One run: split problems into a training pool, a validation set (choices, GRPO's checkpoint curve) and a disjoint
held-out test set; evaluate the base model; per seed, train ReasonMaxxer (offline phase included; one training per
fork-gate setting of the sweep, the best on validation kept), GRPO (a fixed number of steps, or multiples of
ReasonMaxxer's token compute of the same seed) while evaluating it on validation every few steps, optionally the gate
ablation; evaluate every final model on the test set and the transfer task. Every method gets a
:class:`~.ledger.CostLedger`. Each (method, seed) is written as a piece as soon as it ends (:mod:`.pieces`), and
finished pieces are skipped when the run starts again; :func:`aggregate` turns whatever pieces exist into
``evidence.json``, a table and plots (:func:`.report.build_evidence`). The headline is the compute GRPO needs to reach
ReasonMaxxer's validation gain over the base model, divided by ReasonMaxxer's compute.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from ..tasks import PROMPT_TEMPLATES
from .ledger import COMPUTE_UNITS, PHASES
from .pieces import (
    PieceStore,
    git_commit,
    grpo_methods,
    piece_name,
    piece_settings,
    plan_pieces,
    select_methods,
)
from .report import (
    build_evidence,
    eval_generated_tokens,
    format_table,
    grpo_step_tokens,
    grpo_steps_for_budget,
    plot_curve,
    plot_paired,
    split_indices,
)


if TYPE_CHECKING:
    from datasets import Dataset


logger = logging.getLogger(__name__)

EVIDENCE_JSON = "evidence.json"
EVIDENCE_TABLE = "evidence_table.txt"
# what filling one rollout cache has cost so far (in the cache's folder): charged to every run that reuses it
OFFLINE_COST_JSON = "offline_cost.json"
RUN_JSON = "run.json"  # one finished training (a setting of a fork sweep, a GRPO run), beside its adapter
PROGRESS_JSON = "progress.json"  # a whole checkpoint's run key, ledger (and GRPO's validation curve)
# ReasonMaxxer's training saves a checkpoint every this many steps (~7 min at the evidence recipe's size on 2 cores),
# so a training cut short by the end of a sitting resumes near where it stopped
REASONMAXXER_SAVE_STEPS = 5
# two checkpoints kept: a run stopped between saving one and writing its progress resumes from the one before
CHECKPOINTS = {"save_strategy": "steps", "save_total_limit": 2}
FINAL_EVALUATION = "final_evaluation"  # a final model's test and transfer chunks, beside its adapter
FIT_EVALUATION = "fit_evaluation"  # rm_variants' chunks: the pool's own problems (in-sample), the diagnosis set
OFFLINE_PHASES = ("generation", "scoring")


@dataclass
class CompareConfig:
    """
    How much the comparison does (the budget flags of ``trl-reasonmaxxer compare``). The default (one seed) took
    ≈ 54 minutes on a 2-core CPU with the 0.5B default model, 78 with ``--gate_ablation`` (docs/benchmarks.md); its
    6-problem validation set is too small for a headline ratio, so raise ``num_validation_problems`` where compute
    allows. ``examples/recipes/evidence.yaml`` is the powered run (issue 12).

    Parameters:
        > Data

        num_pool_problems (`int`, *optional*, defaults to `8`):
            Training pool of both methods.
        num_validation_problems (`int`, *optional*, defaults to `6`):
            Validation set: the fork-gate choice, GRPO's checkpoint curve and ReasonMaxxer's gain for the headline.
        num_test_problems (`int`, *optional*, defaults to `12`):
            Held-out test set (final numbers only; each final model is evaluated on it once).
        transfer_dataset_name (`str`, *optional*, defaults to `"gsm8k"`):
            Transfer task: its test split (a packaged task) or a local dataset, for the base and every trained model.
        num_transfer_problems (`int`, *optional*, defaults to `0`):
            Problems of the transfer task (a subset seeded by the split seed); `0`: no transfer evaluation.

        > Shared by both methods

        num_generations (`int`, *optional*, defaults to `6`):
            Rollouts per prompt (GRPO's group size, ReasonMaxxer's offline samples).
        max_completion_length (`int`, *optional*, defaults to `224`):
            Completion budget of rollouts and evaluation (160 truncated 79% of the 0.5B default's SVAMP rollouts).
        learning_rate (`float`, *optional*, defaults to `2e-4`):
            AdamW, for both LoRAs.
        prompt_style (`str`, *optional*, defaults to `"brief"`):
            `"brief"` (short reasoning; what a CPU can afford with the 0.5B default) or `"paper"` (tasks.py).

        > Evaluation (same protocol for every model; T=0.6, top-p 0.95)

        num_samples (`int`, *optional*, defaults to `2`):
            Samples per test (and transfer) problem (pass@1 is unbiased from them), plus one greedy completion.
        num_validation_samples (`int`, *optional*, defaults to `2`):
            Samples per validation problem (no greedy).
        eval_seed (`int` or `None`, *optional*, defaults to `None`):
            Sampling seed of every evaluation; `None`: the first training seed. Set it when a run is made in pieces
            (`--seeds 1` alone would otherwise evaluate with seed 1, and its pieces would not match).

        > GRPO

        grpo_compute_multiples (`list[float]`, *optional*, defaults to `[]`):
            GRPO's budget as multiples of ReasonMaxxer's token compute of the same seed (offline phase included):
            `[1, 3]` trains `grpo_equal` and `grpo_3x`. Steps = the fewest whose estimated cost reaches the budget
            (`report.grpo_steps_for_budget`, `report.grpo_step_tokens`). Empty: one `grpo` run of `grpo_max_steps`.
        grpo_max_steps (`int`, *optional*, defaults to `4`):
            Optimiser steps (GRPO's budget B) when `grpo_compute_multiples` is empty.
        grpo_eval_every (`int`, *optional*, defaults to `2`):
            Validation evaluation every N steps (and after the last).
        grpo_prompts_per_step (`int`, *optional*, defaults to `1`):
            Prompts per step, each with `num_generations` completions.

        > ReasonMaxxer

        max_problems (`int`, *optional*, defaults to `8`):
            Mixed-success problems kept.
        fork_thresholds (`list[float]`, *optional*, defaults to `[]`):
            Absolute entropy thresholds τ (nats) to sweep (the paper's: 1.2 1.4 1.6 1.8): one training each on the
            seed's one cached pool, the best on validation is evaluated on test. With `fork_fractions`, both lists
            are swept; both empty: the trainer's default gate (τ calibrated to `fork_fraction` 0.03).
        fork_fractions (`list[float]`, *optional*, defaults to `[]`):
            Shares of completion tokens gated (τ calibrated on the pool) to sweep, as `fork_thresholds`.
        fork_choice_seed (`int` or `None`, *optional*, defaults to `None`):
            The seed whose sweep chooses the fork setting of every seed (the others train that setting only, and
            need that seed's piece first); `None`: every seed sweeps and chooses on validation itself.

        > Generation engine (CPU)

        use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample every evaluation and ReasonMaxxer's rollouts with llama.cpp (`ReasonMaxxerConfig.use_llama_cpp`):
            `true`, `false`, or unset for auto (no CUDA GPU, the `cpu` extra and the model's GGUF at hand).
        llama_cpp_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model as a GGUF file for llama.cpp (the embedded default model has its own).
        grpo_use_llama_cpp (`bool` or `None`, *optional*, defaults to `None`):
            Sample GRPO's rollouts with llama.cpp too, through TRL's `rollout_func` (its LoRA exported to the engine
            at every step; `llama_engine.GRPORollouts`). `None` follows `use_llama_cpp`, so both methods sample on
            the same engine and the wall-clock headline compares like with like; `false` runs GRPO as TRL does
            (then the wall-clock headline includes the engine's speed-up for ReasonMaxxer; the token headline
            does not).
    """

    num_pool_problems: int = field(default=8, metadata={"help": "Training pool of both methods."})
    num_validation_problems: int = field(
        default=6, metadata={"help": "Validation set: fork choice, GRPO's curve, ReasonMaxxer's headline gain."}
    )
    num_test_problems: int = field(default=12, metadata={"help": "Held-out test set (final numbers only)."})
    transfer_dataset_name: str = field(
        default="gsm8k", metadata={"help": "Transfer task (its test split) for the base and every trained model."}
    )
    num_transfer_problems: int = field(
        default=0, metadata={"help": "Problems of the transfer task; 0: no transfer evaluation."}
    )
    num_generations: int = field(default=6, metadata={"help": "Rollouts per prompt, for both methods."})
    max_completion_length: int = field(default=224, metadata={"help": "Completion budget of rollouts and evaluation."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate of both LoRAs."})
    num_samples: int = field(default=2, metadata={"help": "Samples per test problem, plus one greedy completion."})
    num_validation_samples: int = field(default=2, metadata={"help": "Samples per validation problem (no greedy)."})
    eval_seed: int | None = field(
        default=None, metadata={"help": "Sampling seed of every evaluation; unset: the first training seed."}
    )
    grpo_compute_multiples: list[float] = field(
        default_factory=list,
        metadata={"help": "GRPO budgets as multiples of ReasonMaxxer's token compute (1 3: grpo_equal, grpo_3x)."},
    )
    grpo_max_steps: int = field(default=4, metadata={"help": "GRPO's optimiser steps without compute multiples."})
    grpo_eval_every: int = field(default=2, metadata={"help": "GRPO validation evaluation every N steps."})
    grpo_prompts_per_step: int = field(
        default=1, metadata={"help": "GRPO prompts per step, each with num_generations completions."}
    )
    max_problems: int = field(default=8, metadata={"help": "Mixed-success problems ReasonMaxxer keeps."})
    fork_thresholds: list[float] = field(
        default_factory=list, metadata={"help": "Entropy thresholds (nats) to sweep; the best on validation is kept."}
    )
    fork_fractions: list[float] = field(
        default_factory=list, metadata={"help": "Gated token shares to sweep; the best on validation is kept."}
    )
    fork_choice_seed: int | None = field(
        default=None,
        metadata={"help": "The seed whose sweep chooses every seed's fork setting; unset: each seed's own."},
    )
    prompt_style: str = field(
        default="brief", metadata={"help": "brief (short reasoning) or paper.", "choices": list(PROMPT_TEMPLATES)}
    )
    use_llama_cpp: bool | None = field(
        default=None,
        metadata={"help": "Evaluations and ReasonMaxxer's rollouts with llama.cpp: true, false; unset: auto."},
    )
    llama_cpp_model_path: str | None = field(
        default=None, metadata={"help": "GGUF file of the model for llama.cpp (the default model has its own)."}
    )
    grpo_use_llama_cpp: bool | None = field(
        default=None,
        metadata={"help": "GRPO's rollouts with llama.cpp (TRL's rollout_func); unset: as use_llama_cpp."},
    )

    def fork_candidates(self) -> list[dict]:
        """ReasonMaxxer's fork-gate settings, one training each: ``fork_thresholds``, then ``fork_fractions``;
        ``[{}]`` (the trainer's default) when both are empty."""
        forks = [{"fork_threshold": t} for t in self.fork_thresholds]
        return forks + [{"fork_fraction": f} for f in self.fork_fractions] or [{}]


def load_splits(
    dataset_name: str,
    budget: CompareConfig,
    split_seed: int,
    extra_pool_problems: int = 0,
    diagnosis_problems: int = 0,
) -> dict:
    """``{"pool", "validation", "test"}`` datasets with ``prompt`` and ``solution`` columns, pairwise disjoint, and
    ``"transfer"`` (``budget.num_transfer_problems`` of the transfer task's test split) when asked for.

    ``extra_pool_problems``: also ``"extra_pool"``, that many more problems drawn after the others from the same
    permutation, so pool, validation and test stay exactly those of the comparison (a larger-pool variant).
    ``diagnosis_problems``: also ``"diagnosis"``, that many problems from the end of that permutation (the same
    ones whatever the extra pool), a larger held-out set than validation for diagnoses (:func:`validate_variants`).

    A packaged task: pool and validation come from its train split, test from its test split. A local dataset (a
    ``save_to_disk`` folder or a json/jsonl/parquet/csv file with ``prompt`` and ``solution`` columns, read by
    :func:`~trl_reasonmaxxer.tasks.load_local_dataset`): all three from its rows.
    """
    from ..tasks import TASKS, load_local_dataset, load_prompts, load_task

    def checked(data, name: str):
        missing = {"prompt", "solution"} - set(data.column_names)
        if missing:
            raise ValueError(f"{name} lacks the columns {sorted(missing)}: give every row a prompt and a solution.")
        if "id" not in data.column_names:  # pieces pair problems by id
            data = data.add_column("id", [f"{os.path.basename(name)}/{i}" for i in range(len(data))])
        return data

    out = {}
    extra = {"extra_pool": extra_pool_problems} if extra_pool_problems else {}
    tail = {"diagnosis": diagnosis_problems} if diagnosis_problems else {}
    if budget.num_transfer_problems:
        transfer = budget.transfer_dataset_name
        out["transfer"] = checked(
            load_prompts(
                transfer,
                "test",
                num_problems=budget.num_transfer_problems,
                seed=split_seed,
                prompt_style=budget.prompt_style,
            ),
            transfer,
        )
    if dataset_name not in TASKS:
        data = checked(load_local_dataset(dataset_name), dataset_name)
        sizes = {
            "pool": budget.num_pool_problems,
            "validation": budget.num_validation_problems,
            "test": budget.num_test_problems,
        } | extra
        parts = split_indices(len(data), sizes, split_seed, tail)
        return {name: data.select(idx) for name, idx in parts.items()} | out
    train = load_task(dataset_name, "train", prompt_style=budget.prompt_style)
    sizes = {"pool": budget.num_pool_problems, "validation": budget.num_validation_problems} | extra
    parts = split_indices(len(train), sizes, split_seed, tail)
    test = load_task(
        dataset_name, "test", num_problems=budget.num_test_problems, seed=split_seed, prompt_style=budget.prompt_style
    )
    return {name: train.select(idx) for name, idx in parts.items()} | {"test": test} | out


class _Runner:
    """Shared state of one comparison: model path, splits, budget, reward, evaluation protocol. Its ``run_*``
    methods return the raw result of one piece."""

    def __init__(self, model_path, splits, budget, reward_fn, output_dir, eval_seed, settings=None):
        import torch

        self.model_path, self.splits, self.budget = model_path, splits, budget
        self.reward_fn, self.output_dir, self.eval_seed = reward_fn, output_dir, eval_seed
        self.settings = settings
        self.use_cpu = not torch.cuda.is_available()

    def load(self, adapter: str | None = None):
        from ..evaluation import load_model_for_eval

        return load_model_for_eval(self.model_path, adapter)

    def evaluate(self, model, tokenizer, split: str, desc: str, ledger=None, resume: tuple | None = None) -> dict:
        """``evaluation.evaluate`` on ``split`` with the protocol of its kind: validation (and pool) samples only;
        test, transfer (and diagnosis) samples and a greedy completion. Its records keep answers and correctness, not
        texts.
        ``resume``: ``(folder, model key)``, keep and reuse its chunks there (``evaluation.evaluate``'s
        ``resume_dir``)."""
        from ..evaluation import evaluate

        b = self.budget
        diagnostic = split in ("validation", "pool")
        samples, greedy = (b.num_validation_samples, False) if diagnostic else (b.num_samples, True)
        run = lambda: evaluate(
            model,
            tokenizer,
            self.splits[split],
            num_samples=samples,
            greedy=greedy,
            max_new_tokens=b.max_completion_length,
            seed=self.eval_seed,
            batch_size=32,
            reward_fn=self.reward_fn,
            desc=desc,
            use_llama_cpp=b.use_llama_cpp,
            llama_cpp_model_path=b.llama_cpp_model_path,
            **({} if resume is None else self.resume_args(split, *resume)),
        )
        if ledger is None:
            return run()
        with ledger.phase("evaluation"):
            result = run()
        ledger.add_tokens("evaluation", generated=eval_generated_tokens(result["summary"]))
        return result

    def resume_args(self, split: str, folder: str, model_key) -> dict:
        return dict(
            resume_dir=os.path.join(
                folder, FIT_EVALUATION if split in ("pool", "diagnosis") else FINAL_EVALUATION, split
            ),
            resume_key={"model": model_key, "split": split, "settings": self.settings},
        )

    def final_evaluations(self, model, tokenizer, name: str, folder: str, model_key, transfer: bool = True) -> dict:
        """The held-out test evaluation of a final model, and the transfer task's when there is one (and
        ``transfer``); each kept in chunks under ``folder`` (the model's run folder), so a stopped evaluation of the
        model identified by ``model_key`` resumes where it stopped."""
        resume = (folder, model_key)
        out = {"test": self.evaluate(model, tokenizer, "test", f"{name} (test)", resume=resume)}
        if transfer and "transfer" in self.splits:
            out["transfer"] = self.evaluate(model, tokenizer, "transfer", f"{name} (transfer)", resume=resume)
        return out

    def pool_size(self, extra_pool: Dataset | None) -> int | None:
        """The size of a pool enlarged by ``extra_pool`` (for its run's label); None for the comparison's own."""
        return None if extra_pool is None else len(self.splits["pool"]) + len(extra_pool)

    def new_ledger(self, method, model):
        from .ledger import CostLedger, device_name

        ledger = CostLedger(method, device=device_name())
        ledger.count_forward_tokens(model)
        ledger.start_memory()
        return ledger

    def common_args(self, seed: int) -> dict:
        b = self.budget
        # no warm-up: with a handful of optimiser steps a linear warm-up spends the first one at lr 0
        return dict(
            max_completion_length=b.max_completion_length,
            temperature=0.6,
            top_p=0.95,
            learning_rate=b.learning_rate,
            warmup_steps=0,
            logging_steps=1,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to="none",
            use_cpu=self.use_cpu,
            bf16=not self.use_cpu,
            seed=seed,
        )

    def run_piece(self, method: str, seed: int, base: dict, store: PieceStore) -> dict:
        """One trained method for one seed; GRPO at a compute multiple and the gate ablation read the same seed's
        ReasonMaxxer piece (its compute, its fork choice)."""
        b = self.budget
        if method == "reasonmaxxer":
            chooser = b.fork_choice_seed
            if chooser is None or chooser == seed or len(b.fork_candidates()) == 1:
                return self.run_reasonmaxxer(seed, "entropy", b.fork_candidates(), with_validation=True)
            fork = _required_piece(store, "reasonmaxxer", chooser, f"ReasonMaxxer (fork_choice_seed {chooser})")
            out = self.run_reasonmaxxer(seed, "entropy", [fork["fork_choice"]], with_validation=True)
            return out | {"fork_choice_seed": chooser}
        grpo = grpo_methods(b.grpo_compute_multiples)
        if method in grpo:
            rm = None if grpo[method] is None else _required_piece(store, "reasonmaxxer", seed, method)
            return self.run_grpo(seed, method, base, rm, grpo[method])
        rm = _required_piece(store, "reasonmaxxer", seed, method)
        gate = method.removeprefix("reasonmaxxer_")
        # the ablation is a diagnosis on the training task: no transfer evaluation (~30 min each on 2 cores)
        return self.run_reasonmaxxer(seed, gate, [rm["fork_choice"]], with_validation=False, with_transfer=False)

    def run_base(self) -> dict:
        from .ledger import CostLedger, device_name

        model, tokenizer = self.load()
        ledger = CostLedger("base", device=device_name())
        out = {"validation": self.evaluate(model, tokenizer, "validation", "Base (val)", ledger)}
        out |= self.final_evaluations(model, tokenizer, "Base", os.path.join(self.output_dir, "base"), "base")
        _free(model)
        out["engines"] = {"evaluation": out["test"]["summary"]["engine"]}
        # the problem ids of every split (the settings only keep their fingerprint), to audit disjointness
        return out | {"ledger": ledger.to_dict(), "splits": {name: list(s["id"]) for name, s in self.splits.items()}}

    def grpo_budget(self, tokenizer, multiple: float, rm_tokens: float, base_validation: dict) -> dict:
        """GRPO's ``max_steps`` for ``multiple`` × ReasonMaxxer's token compute (:func:`.report.grpo_step_tokens`
        and :func:`.report.grpo_steps_for_budget`): prompt length averaged over the pool, completion length from the
        base model's validation samples (the same model, sampling and token budget as GRPO's first rollouts)."""
        from ..rollouts import tokenize_prompt

        b = self.budget
        prompt_lengths = [len(tokenize_prompt(tokenizer, p)) for p in self.splits["pool"]["prompt"]]
        prompt_tokens = sum(prompt_lengths) / len(prompt_lengths)
        completion_tokens = base_validation["summary"]["mean_completion_tokens"]
        per_step = grpo_step_tokens(prompt_tokens, completion_tokens, b.num_generations * b.grpo_prompts_per_step)
        target = multiple * rm_tokens
        return {
            "multiple": multiple,
            "reasonmaxxer_tokens": rm_tokens,
            "target_tokens": target,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "tokens_per_step": per_step,
            "max_steps": grpo_steps_for_budget(target, per_step),
        }

    def run_grpo(self, seed: int, method: str, base: dict, rm: dict | None = None, multiple: float | None = None):
        """GRPO for one seed: ``grpo_max_steps``, or (with ``multiple``) as many steps as ``multiple`` × the
        ReasonMaxxer piece ``rm``'s token compute buys; evaluated on validation along the way (its curve). Runs longer
        than a sitting resume: the training from its last checkpoint (every ``grpo_eval_every`` steps, with the
        ledger and curve so far), the final evaluation from the adapter and ``run.json`` it leaves."""
        folder = os.path.join(self.output_dir, f"seed{seed}", method)
        model, tokenizer = self.load()
        budget = None
        if multiple is not None:
            budget = self.grpo_budget(tokenizer, multiple, rm["compute"]["tokens"], base["validation"])
        max_steps = self.budget.grpo_max_steps if budget is None else budget["max_steps"]
        key = {"seed": seed, "method": method, "max_steps": max_steps, "settings": self.settings}
        trained = _finished_run(folder, key)
        if trained is None:
            trained = self.train_grpo(model, tokenizer, folder, key, base, budget)
            _save_json({"run_key": key, "result": trained}, folder, RUN_JSON)
            _remove_checkpoints(folder, "the finished run's adapter and run.json replace them")
        else:
            print(f"{method}, seed {seed}: trained earlier, loaded from {folder}", flush=True)
        _free(model)
        model, tokenizer = self.load(trained["adapter"])
        out = self.final_evaluations(model, tokenizer, method, folder, adapter_key(folder))
        _free(model)
        engines = trained["engines"] | {"evaluation": out["test"]["summary"]["engine"]}
        kept = ("validation_curve", "ledger", "grpo_budget", "adapter")
        return out | {k: trained[k] for k in kept} | {"engines": engines}

    def train_grpo(self, model, tokenizer, folder: str, key: dict, base: dict, budget: dict | None) -> dict:
        """TRL's ``GRPOTrainer`` for ``key["max_steps"]`` steps, resumed from the last checkpoint in ``folder`` that
        this ``key`` made; its adapter saved under ``folder/adapter``."""
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from ..config import default_lora_config
        from ..llama_engine import grpo_rollout_func

        b, runner = self.budget, self
        base_val = base["validation"]["summary"]["pass@1"]
        ledger = self.new_ledger(key["method"], model)
        grpo_engine = b.use_llama_cpp if b.grpo_use_llama_cpp is None else b.grpo_use_llama_cpp
        rollout_func = grpo_rollout_func(model, grpo_engine, b.llama_cpp_model_path)
        curve = [{"step": 0, "compute": dict.fromkeys(COMPUTE_UNITS, 0.0), "pass@1": base_val, "gain": 0.0}]
        checkpoint = _resume(folder, key, ledger, f"{key['method']}, seed {key['seed']}")
        if checkpoint is not None:
            curve = checkpoint["curve"]

        class ValidationCurve(TrainerCallback):
            """Evaluates on the validation set every ``grpo_eval_every`` steps and at the end (charged to
            evaluation, so it is not GRPO's cost)."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % b.grpo_eval_every and state.global_step != state.max_steps:
                    return
                compute = {u: ledger.compute(u) for u in COMPUTE_UNITS}
                score = runner.evaluate(model, tokenizer, "validation", f"GRPO step {state.global_step}", ledger)
                score = score["summary"]["pass@1"]
                curve.append(
                    {"step": state.global_step, "compute": compute, "pass@1": score, "gain": score - base_val}
                )

        args = GRPOConfig(
            output_dir=folder,
            max_steps=key["max_steps"],
            per_device_train_batch_size=b.num_generations * b.grpo_prompts_per_step,
            gradient_accumulation_steps=1,
            num_generations=b.num_generations,
            **self.common_args(key["seed"]) | CHECKPOINTS | {"save_steps": b.grpo_eval_every},
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[self.reward_fn],
            args=args,
            train_dataset=self.splits["pool"],
            processing_class=tokenizer,
            peft_config=default_lora_config(model),
            callbacks=[ValidationCurve(), _progress_saver(folder, key, ledger, PHASES, lambda: {"curve": curve})],
            rollout_func=rollout_func,
        )
        ledger.wrap(trainer, "_generate", "generation", count_generated=lambda out: sum(map(len, out[1])))
        ledger.wrap(trainer, "_generate_and_score_completions", "scoring")
        with ledger.phase("training"):
            trainer.train(resume_from_checkpoint=None if checkpoint is None else checkpoint["path"])
        ledger.extra["grpo_num_input_tokens_seen"] = trainer.state.num_input_tokens_seen
        ledger.extra["steps"] = trainer.state.global_step
        if budget is not None:
            realized = ledger.compute("tokens")
            budget |= {"realized_tokens": realized, "realized_over_target": realized / max(budget["target_tokens"], 1)}
        ledger.finish_memory()
        adapter = os.path.join(folder, "adapter")
        trainer.save_model(adapter)
        engines = {"rollouts": "transformers" if rollout_func is None else "llama.cpp"}
        if rollout_func is not None:
            rollout_func.close()
        _free(trainer)
        return {
            "adapter": adapter,
            "validation_curve": curve,
            "ledger": ledger.to_dict(),
            "engines": engines,
            "grpo_budget": budget,
        }

    def run_reasonmaxxer(
        self, seed: int, gate: str, forks: Sequence[dict], with_validation: bool, with_transfer: bool = True
    ) -> dict:
        """ReasonMaxxer with ``gate`` for one seed: one training per fork setting of ``forks``, all on the seed's one
        cached pool, each scored on validation (when ``with_validation`` or when there is a choice to make); the
        best on validation (ties: the first) is evaluated on test and (``with_transfer``) transfer, once. Its ledger
        is that training's plus the offline phase; ``sweep_compute`` adds the other settings' training."""
        runs = [self.trained_reasonmaxxer(seed, gate, fork, with_validation or len(forks) > 1) for fork in forks]
        best = max(range(len(runs)), key=lambda i: runs[i]["validation"]["summary"]["pass@1"]) if len(runs) > 1 else 0
        chosen = runs[best]
        model, tokenizer = self.load(chosen["adapter"])
        folder = os.path.dirname(chosen["adapter"])
        name = f"ReasonMaxxer {chosen['label']}"
        out = self.final_evaluations(model, tokenizer, name, folder, adapter_key(folder), with_transfer)
        _free(model)
        sweep = [
            {
                "fork": r["fork"],
                "validation_pass@1": r["validation"]["summary"]["pass@1"] if "validation" in r else None,
                "compute": {u: r["ledger"][f"compute_{u}"] for u in COMPUTE_UNITS},
                "threshold": r["pool"].get("fork/threshold"),
                "gated_fraction": r["pool"].get("fork/gated_fraction"),
            }
            for r in runs
        ]
        others = [r for i, r in enumerate(runs) if i != best]
        out |= {
            "ledger": chosen["ledger"],
            "pool": chosen["pool"],
            "engines": chosen["engines"] | {"evaluation": out["test"]["summary"]["engine"]},
            "fork_choice": chosen["fork"],
            "fork_sweep": sweep,
            "adapter": chosen["adapter"],
            "sweep_compute": {
                u: chosen["ledger"][f"compute_{u}"] + sum(r["training_compute"][u] for r in others)
                for u in COMPUTE_UNITS
            },
        }
        if "validation" in chosen:
            out["validation"] = chosen["validation"]
        return out

    def trained_reasonmaxxer(
        self,
        seed: int,
        gate: str,
        fork: dict,
        with_validation: bool,
        overrides: dict | None = None,
        extra_pool: Dataset | None = None,
    ) -> dict:
        """:meth:`train_reasonmaxxer`'s result, from its ``run.json`` beside the adapter when an earlier run of this
        seed, gate, fork setting, ``overrides``, ``extra_pool`` and comparison settings finished it (a sweep cut
        short resumes at the setting it was training), else trained now and recorded there."""
        overrides = check_overrides(overrides or {})
        label, folder, key = self.reasonmaxxer_run(seed, gate, fork, with_validation, overrides, extra_pool)
        done = _finished_run(folder, key)
        if done is not None:
            print(f"reasonmaxxer {label}, seed {seed}: trained earlier, loaded from {folder}", flush=True)
            return done
        out = self.train_reasonmaxxer(seed, gate, fork, with_validation, overrides, extra_pool)
        _save_json({"run_key": key, "result": out}, folder, RUN_JSON)
        _remove_checkpoints(folder, "the finished run's adapter and run.json replace them")
        return out

    def reasonmaxxer_run(
        self, seed: int, gate: str, fork: dict, with_validation: bool, overrides: dict, extra_pool: Dataset | None
    ) -> tuple[str, str, dict]:
        """A ReasonMaxxer training's label, folder (``seed<N>/reasonmaxxer-<label>``: its checkpoints, adapter and
        ``run.json``) and key (what its record and checkpoints must have been made with to be reused)."""
        label = _run_label(gate, fork, overrides, self.pool_size(extra_pool))
        key = {"seed": seed, "gate": gate, "fork": fork, "with_validation": with_validation, "settings": self.settings}
        if overrides:  # absent otherwise, so the records of runs without overrides keep their key
            key["overrides"] = overrides
        if extra_pool is not None:
            key["extra_pool"] = list(extra_pool["id"])
        return label, os.path.join(self.output_dir, f"seed{seed}", f"reasonmaxxer-{label}"), key

    def train_reasonmaxxer(
        self,
        seed: int,
        gate: str,
        fork: dict,
        with_validation: bool,
        overrides: dict | None = None,
        extra_pool: Dataset | None = None,
    ) -> dict:
        """One ReasonMaxxer training (offline phase, possibly from the seed's cache, then training), its checkpoints
        and adapter saved under ``seed<N>/reasonmaxxer-<gate>[-<fork setting>][-<overrides>][-pool<N>]``, resumed
        from the last checkpoint there that this run's key made; ``overrides`` are ``ReasonMaxxerConfig`` fields that
        do not change the pool (checked by :meth:`trained_reasonmaxxer`). ``extra_pool``: problems added to the pool
        (its rollouts are cached under their own key)."""
        from datasets import concatenate_datasets

        from ..config import ReasonMaxxerConfig
        from ..trainer import ReasonMaxxerTrainer

        b = self.budget
        overrides = overrides or {}
        label, folder, key = self.reasonmaxxer_run(seed, gate, fork, with_validation, overrides, extra_pool)
        pool, max_problems = self.splits["pool"], b.max_problems
        if extra_pool is not None:
            pool = concatenate_datasets([pool, extra_pool])
            # the cap grows with the pool, so a recipe that keeps every mixed problem still does
            max_problems = None if max_problems is None else max_problems + len(extra_pool)
        model, tokenizer = self.load()
        ledger = self.new_ledger(f"reasonmaxxer/{label}", model)
        # every gate and fork setting of a seed shares its cached rollouts and scores; each run has its own checkpoints
        args = ReasonMaxxerConfig(
            output_dir=folder,
            rollout_cache_root=os.path.join(self.output_dir, f"seed{seed}", "reasonmaxxer", "rollouts"),
            num_generations=b.num_generations,
            max_problems=max_problems,
            fork_gate=gate,
            use_llama_cpp=b.use_llama_cpp,
            llama_cpp_model_path=b.llama_cpp_model_path,
            **fork,
            **(self.common_args(seed) | overrides | CHECKPOINTS | {"save_steps": REASONMAXXER_SAVE_STEPS}),
        )
        trainer = ReasonMaxxerTrainer(
            model=model,
            reward_funcs=[self.reward_fn],
            args=args,
            train_dataset=pool,
            processing_class=tokenizer,
            callbacks=[_progress_saver(folder, key, ledger, ("training",))],
        )
        with ledger.phase("scoring"):
            earlier = _track_offline_cost(trainer, ledger)
            trainer.prepare_training_data()
        ledger.charge(earlier)
        # the offline phase is charged from its cache above; a checkpoint brings the training before it
        checkpoint = _resume(folder, key, ledger, f"reasonmaxxer {label}, seed {seed}")
        if ledger.totals()["generated"] == 0:
            ledger.extra["offline_cost_unknown"] = True
            logger.warning(
                "The rollouts in %s were generated by a run that recorded no cost (%s is missing): ReasonMaxxer's "
                "compute misses its offline phase. Delete that folder to measure it again.",
                trainer.rollout_cache_dir,
                OFFLINE_COST_JSON,
            )
        with ledger.phase("training"):
            trainer.train(resume_from_checkpoint=None if checkpoint is None else checkpoint["path"])
        out = {"fork": fork, "label": label, "pool": trainer.pool_stats, "log_history": trainer.state.log_history}
        out["engines"] = {"rollouts": trainer.rollout_engine_name}
        if with_validation:
            out["validation"] = self.evaluate(trainer.model, tokenizer, "validation", f"ReasonMaxxer {label}", ledger)
        ledger.finish_memory()
        out["adapter"] = os.path.join(folder, "adapter")
        trainer.save_model(out["adapter"])
        out["training_compute"] = {u: ledger.compute(u, ("training",)) for u in COMPUTE_UNITS}
        out["ledger"] = ledger.to_dict()
        _free(trainer, model)
        return out


def _run_label(gate: str, fork: dict, overrides: dict | None = None, pool_problems: int | None = None) -> str:
    label = gate + "".join(f"-{key.removeprefix('fork_')}{value:g}" for key, value in fork.items())
    label += "".join(f"-{key}{value}" for key, value in sorted((overrides or {}).items()))
    return label if pool_problems is None else f"{label}-pool{pool_problems}"


# ReasonMaxxerConfig fields a variant may not override: they make (or find) the seed's pool, or are the run's own
POOL_FIELDS = (
    "output_dir",
    "rollout_cache_root",
    "num_generations",
    "max_problems",
    "max_completion_length",
    "temperature",
    "top_p",
    "seed",
    "use_llama_cpp",
    "llama_cpp_model_path",
    "fork_gate",
)


def check_overrides(overrides: dict) -> dict:
    """``overrides`` if every key is a ``ReasonMaxxerConfig`` field that a variant trained on a seed's cached pool
    may change (not :data:`POOL_FIELDS`, and no ``fork_*`` setting: those are the fork argument); else a ValueError
    naming the keys."""
    from dataclasses import fields

    from ..config import ReasonMaxxerConfig

    names = {f.name for f in fields(ReasonMaxxerConfig)}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise ValueError(f"{unknown} are not ReasonMaxxerConfig fields; see `trl-reasonmaxxer train --help`.")
    fixed = sorted(k for k in overrides if k in POOL_FIELDS or k.startswith("fork_"))
    if fixed:
        raise ValueError(
            f"A variant cannot override {fixed}: they define the seed's cached pool or the fork setting (give the fork "
            "setting as --fork_threshold / --fork_fraction, the seed as --seed)."
        )
    return dict(overrides)


def _finished_run(folder: str, key: dict) -> dict | None:
    """The result recorded in ``folder``'s ``run.json`` if it was made with ``key`` (seed, gate, fork setting,
    settings) and its adapter is there; None otherwise (nothing there, or a record that is not trusted: said why)."""
    path = os.path.join(folder, RUN_JSON)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        result = record["result"]
        trusted = record["run_key"] == json.loads(json.dumps(key)) and os.path.isfile(
            os.path.join(result["adapter"], "adapter_config.json")
        )
        reason = "it was made with other settings, or its adapter is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        trusted, reason = False, f"it cannot be read ({err})"
    if not trusted:
        logger.warning("%s is not reused: %s. That training runs again.", path, reason)
        return None
    return result


def piece_test_split(piece: dict) -> tuple[CompareConfig, object]:
    """The budget a piece ran with and its held-out test split: the problems its ``test`` records cover."""
    settings = piece["settings"]
    budget = CompareConfig(**{f.name: settings[f.name] for f in fields(CompareConfig) if f.name in settings})
    return budget, load_splits(settings["dataset_name"], budget, settings["split_seed"])["test"]


def adapter_folder(piece: dict, runs_dir: str | None) -> str:
    """The run folder holding the piece's ``adapter/``: under ``runs_dir`` (``seed<S>/<run>``), else as recorded."""
    recorded = piece.get("adapter")
    if not recorded:
        raise ValueError(f"{piece['name']} records no adapter (a piece written before adapters were recorded).")
    run = os.path.dirname(os.path.normpath(recorded))
    candidates = [os.path.join(runs_dir, *run.split(os.sep)[-2:])] if runs_dir else []
    for folder in [*candidates, run]:
        if os.path.isfile(os.path.join(folder, "adapter", "adapter_config.json")):
            return folder
    raise FileNotFoundError(
        f"The adapter of {piece['name']} is not in {' nor '.join(candidates + [run])}: pass the comparison's "
        "--output_dir on this machine, which holds its seed<S>/<run>/adapter folders (footprints.py: --runs-dir)."
    )


def adapter_key(folder: str) -> str:
    """What identifies the adapter saved in ``folder/adapter``: a hash of its weights file (a retrained adapter, even
    with the same settings, never reuses the old one's evaluation chunks)."""
    from ..cache import file_digest

    adapter = os.path.join(folder, "adapter")
    weights = [n for n in sorted(os.listdir(adapter)) if n.startswith("adapter_model.")]
    if not weights:
        raise FileNotFoundError(f"No adapter weights (adapter_model.*) in {adapter}.")
    return file_digest(os.path.join(adapter, weights[0]))


def kept_adapter_results(
    pieces: Mapping[str, dict],
    names: Sequence[str],
    runs_dir: str | None,
    workdir: str,
    key: Mapping,
    make: Callable[[dict, str], dict],
):
    """``(name, make(piece, run folder))`` for each named piece, its result kept in ``workdir/<name>.json`` under its
    adapter's weights, its settings and ``key``, and reused while they match (analyses of finished adapters)."""
    from ..evaluation import cached_result

    for name in names:
        piece = pieces[name]
        folder = adapter_folder(piece, runs_dir)
        kept = {"adapter": adapter_key(folder), "settings": piece["settings"], **key}
        path = os.path.join(workdir, f"{name}.json")
        yield name, cached_result(path, kept, lambda piece=piece, folder=folder: make(piece, folder))


def _checkpoint_step(name: str) -> int | None:
    step = name.removeprefix("checkpoint-")
    return int(step) if name.startswith("checkpoint-") and step.isdigit() else None


def _last_checkpoint(folder: str, key: dict) -> dict | None:
    """The last checkpoint in ``folder`` whose ``progress.json`` this ``key`` (a run's seed, method, settings) wrote:
    its progress (``step``, ``ledger``, GRPO's ``curve``) and ``path``. The others (another key's, or saved without their progress by a run
    that stopped there) are removed, so the trainer's rotation of checkpoints never keeps them over new ones."""
    if not os.path.isdir(folder):
        return None
    found, stale = [], []
    for name in os.listdir(folder):
        step = _checkpoint_step(name)
        if step is None:
            continue
        path = os.path.join(folder, name)
        try:
            with open(os.path.join(path, PROGRESS_JSON)) as f:
                progress = json.load(f)
            trusted = progress["run_key"] == json.loads(json.dumps(key)) and progress["step"] == step
        except (OSError, ValueError, KeyError, TypeError):
            trusted = False
        if trusted:
            found.append(progress | {"path": path})
        else:
            stale.append(path)
    best = max(found, key=lambda p: p["step"], default=None)
    for path in stale:
        logger.warning("Removing %s: it was not written whole by a run with these settings.", path)
        shutil.rmtree(path, ignore_errors=True)
    return best


def _resume(folder: str, key: dict, ledger, name: str) -> dict | None:
    """:func:`_last_checkpoint`, its ledger part charged to ``ledger`` (the steps before it are paid once)."""
    checkpoint = _last_checkpoint(folder, key)
    if checkpoint is not None:
        ledger.charge(checkpoint["ledger"])
        ledger.extra["resumed_from_step"] = checkpoint["step"]
        print(f"{name}: resuming at step {checkpoint['step']}", flush=True)
    return checkpoint


def _progress_saver(folder: str, key: dict, ledger, phases: Sequence[str], extra: Callable[[], dict] = dict):
    """A callback writing ``progress.json`` into each checkpoint the trainer saves in ``folder``: ``key``, the step,
    ``ledger``'s ``phases`` so far and ``extra()``, which is what :func:`_last_checkpoint` trusts and resumes from."""
    from transformers import TrainerCallback

    class ProgressSaver(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            progress = {"run_key": key, "step": state.global_step, "ledger": ledger.part(phases), **extra()}
            _save_json(progress, os.path.join(folder, f"checkpoint-{state.global_step}"), PROGRESS_JSON)

    return ProgressSaver()


def _remove_checkpoints(folder: str, why: str) -> None:
    for name in os.listdir(folder):
        if _checkpoint_step(name) is not None:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    logger.info("Removed the checkpoints in %s: %s.", folder, why)


def _track_offline_cost(trainer, ledger) -> dict:
    """Charge the offline phase's generation and scoring calls to ``ledger``, and keep the running total of what
    filling this rollout cache has cost in its ``offline_cost.json``, rewritten after every chunk generated or
    scored (so an interrupted offline phase keeps its cost). Returns the cost of the earlier runs that filled it,
    for ``ledger.charge`` once the offline phase ends: a run that reuses the cache (another fork setting, the gate
    ablation, a resumed run) pays for the rollouts it trains on, and nothing is paid twice."""
    from .ledger import CostLedger

    folder = trainer.rollout_cache_dir
    earlier = {}
    if os.path.exists(os.path.join(folder, OFFLINE_COST_JSON)):
        with open(os.path.join(folder, OFFLINE_COST_JSON)) as f:
            earlier = json.load(f)

    def save():
        total = CostLedger("offline")
        total.charge(earlier)
        total.charge(ledger.part(OFFLINE_PHASES))
        os.makedirs(folder, exist_ok=True)
        _save_json(total.part(OFFLINE_PHASES), folder, OFFLINE_COST_JSON)

    ledger.wrap(
        trainer.offline,
        "generate",
        "generation",
        count_generated=lambda groups: sum(len(c["completion_ids"]) for g in groups for c in g),
        after=save,
    )
    ledger.wrap(trainer.offline, "score_sequences", "scoring", after=save)
    return earlier


def _required_piece(store: PieceStore, method: str, seed: int, needed_by: str) -> dict:
    piece = store.load(piece_name(method, seed))
    if piece is None:
        raise ValueError(
            f"{needed_by} of seed {seed} needs {store.path(piece_name(method, seed))} (ReasonMaxxer's compute and "
            f"fork choice of that seed): run `--methods {method} --seeds {seed}` first."
        )
    return piece


def _free(*objects) -> None:
    import torch

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_comparison(
    output_dir: str = "runs/compare",
    model: str = "default",
    dataset_name: str = "svamp",
    budget: CompareConfig | None = None,
    seeds: Sequence[int] = (42,),
    gate_ablation: bool = False,
    reward_fn: Callable | None = None,
    split_seed: int = 42,
    label: str = "default",
    methods: Sequence[str] | None = None,
    pieces_dir: str | None = None,
) -> dict:
    """Run every piece of the comparison (``methods`` only, when given; the base model whenever its piece is
    missing) that ``pieces_dir`` (default ``output_dir/pieces``) does not hold yet, each written as soon as it
    ends; then :func:`aggregate` all the pieces there. Returns the evidence."""
    from ..rewards import math_accuracy_reward

    budget = budget or CompareConfig()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("Give at least one seed (--seeds 42).")
    reward_fn = reward_fn or math_accuracy_reward
    plan = plan_pieces(budget.grpo_compute_multiples, seeds, gate_ablation)
    todo = select_methods(plan, methods)
    eval_seed = seeds[0] if budget.eval_seed is None else budget.eval_seed
    runner, store = _setup(output_dir, model, dataset_name, budget, reward_fn, split_seed, eval_seed, pieces_dir)
    base = None
    for method, seed in todo:
        name = piece_name(method, seed)
        piece = store.load(name)
        if piece is not None:
            print(f"{name}: finished earlier, loaded from {store.path(name)}", flush=True)
        else:
            start = time.perf_counter()
            result = runner.run_base() if method == "base" else runner.run_piece(method, seed, base, store)
            compute = {u: result["ledger"][f"compute_{u}"] for u in COMPUTE_UNITS}
            info = {"method": method, "seed": seed, "elapsed_s": time.perf_counter() - start, "compute": compute}
            piece = store.save(name, info | result)
            print(f"{name}: written to {store.path(name)}", flush=True)
        if method == "base":
            base = piece
    return aggregate(output_dir, store, [piece_name(m, s) for m, s in plan], label)


def _setup(output_dir, model, dataset_name, budget, reward_fn, split_seed, eval_seed, pieces_dir):
    """The comparison's runner (splits, settings) and its pieces folder, every piece there checked against these
    settings now rather than after hours of work."""
    from ..cache import fingerprint
    from ..default_model import DEFAULT_MODEL, resolve_model

    splits = load_splits(dataset_name, budget, split_seed)
    settings = piece_settings(
        DEFAULT_MODEL if model == "default" else model,
        dataset_name,
        split_seed,
        f"{getattr(reward_fn, '__module__', '')}.{getattr(reward_fn, '__qualname__', type(reward_fn).__name__)}",
        budget,
        eval_seed,
        fingerprint({name: list(split["id"]) for name, split in splits.items()}),
    )
    store = PieceStore(pieces_dir or os.path.join(output_dir, "pieces"), settings)
    store.load_all()
    os.makedirs(output_dir, exist_ok=True)
    return _Runner(resolve_model(model), splits, budget, reward_fn, output_dir, eval_seed, settings), store


def validate_variants(
    variants: Mapping[str, dict],
    fork: dict,
    seed: int = 0,
    output_dir: str = "runs/compare",
    model: str = "default",
    dataset_name: str = "svamp",
    budget: CompareConfig | None = None,
    reward_fn: Callable | None = None,
    split_seed: int = 42,
    pieces_dir: str | None = None,
    fit: bool = False,
    extra_pool_problems: int = 0,
    diagnosis_problems: int = 0,
    reference_pieces: Sequence[str] = (),
) -> dict:
    """Why does ReasonMaxxer gain or not, found on validation: each variant (``name → ReasonMaxxerConfig``
    overrides, :func:`check_overrides`) trained at ``fork`` on ``seed``'s cached pool of the comparison in
    ``output_dir``, scored on its validation set and paired per problem with the base model's piece (which must
    exist). The test set is never touched. Each training is kept (``run.json``) and reused, as the sweep's are.
    Returns ``{name: {"overrides", "validation", "paired", "fork_fraction", "dlogp_pos", "dlogp_neg", "kl",
    "neg_floored"}}`` (the last four: means over the training's logged steps; ``neg_floored`` None without a
    ``neg_prob_floor``).

    ``fit``: also the in-sample check, ``"fit": {"pass@1", "base", "paired"}``: the variant and the base model on
    the pool's own problems (the ones it trained on), with validation's protocol, paired per problem. A variant
    that does not gain there did not learn its pool; one that gains there but not on validation did not carry it
    over. Both evaluations are kept in chunks (``fit_evaluation/pool`` beside the adapter, and under
    ``<output_dir>/base``) and reused.

    ``extra_pool_problems``: every variant trains on a larger pool, the comparison's plus that many more problems of
    the same training split, disjoint from its validation and test sets (their rollouts are sampled and cached like
    the pool's). Is the pool too small to carry over? The in-sample check stays on the comparison's pool.

    ``diagnosis_problems``: also ``"diagnosis": {"pass@1", "greedy", "base", "base_greedy", "paired",
    "paired_greedy"}``, each variant and the base on that many more problems of the training split (drawn from the end
    of its permutation: disjoint from pool, validation, test and any extra pool), with the test protocol (samples
    and a greedy completion), paired per problem. Validation is small (60 problems × 2 samples: ±0.05) and sampled
    only, while the effects seen on test are largest in greedy accuracy; this set resolves them without touching
    test. Kept in chunks like ``fit``'s.

    ``reference_pieces``: finished pieces of the comparison (``grpo_equal-seed0``...) whose adapters are scored on
    the diagnosis set too, as ``{"reference": True, "diagnosis": ...}`` rows: what a method that gains on test (or the
    recipe's own final adapter) shows on this set, the yardstick for the variants. Every other row's diagnosis then
    also holds ``"vs_reference": {"name", "paired", "paired_greedy"}``, its paired differences with the first
    reference piece's on the same problems (a variant against GRPO, say)."""
    from ..rewards import math_accuracy_reward
    from ..stats import paired_difference, per_problem_scores

    budget = budget or CompareConfig()
    reward_fn = reward_fn or math_accuracy_reward
    eval_seed = seed if budget.eval_seed is None else budget.eval_seed
    runner, store = _setup(output_dir, model, dataset_name, budget, reward_fn, split_seed, eval_seed, pieces_dir)
    if reference_pieces and not diagnosis_problems:
        raise ValueError("Reference pieces are scored on the diagnosis set: give diagnosis_problems too.")
    references = {name: store.load(name) for name in reference_pieces}
    missing = [store.path(name) for name, piece in references.items() if piece is None]
    if missing:
        raise ValueError(f"No such reference pieces: {missing}. Give names of pieces that exist (`<method>-seed<S>`).")
    folders = {name: adapter_folder(piece, output_dir) for name, piece in references.items()}
    base = store.load("base")
    if base is None:
        raise ValueError(
            f"Variants are scored against the base model's validation records in {store.path('base')}, which does "
            "not exist: run `trl-reasonmaxxer compare` with the same settings and `--methods base` first."
        )
    control = per_problem_scores(base["validation"], "pass@1")
    base_folder = os.path.join(output_dir, "base")
    if fit:
        fit_base = _held_evaluation(runner, "pool", None, base_folder, "base", "base")
        fit_control = per_problem_scores(fit_base, "pass@1")
    more = {}
    if extra_pool_problems or diagnosis_problems:  # both from one draw of the comparison's permutation
        more = load_splits(dataset_name, budget, split_seed, extra_pool_problems, diagnosis_problems)
    extra = more.get("extra_pool")
    if diagnosis_problems:
        runner.splits["diagnosis"] = more["diagnosis"]
        diagnosis_base = _held_evaluation(runner, "diagnosis", None, base_folder, "base", "base")
    out, evaluated = {}, {}  # evaluated: each row's diagnosis evaluation, for the pairing with the first reference
    for name, overrides in variants.items():
        run = runner.trained_reasonmaxxer(seed, "entropy", fork, True, overrides, extra)
        logs = run.get("log_history", [])
        out[name] = {
            "overrides": overrides,
            "pool_problems": run["pool"].get("pool/prompts"),
            "mixed_problems": run["pool"].get("pool/prompts_selected"),
            "validation": run["validation"]["summary"]["pass@1"],
            "paired": paired_difference(per_problem_scores(run["validation"], "pass@1"), control, seed=0),
            "fork_fraction": run["pool"].get("fork/gated_fraction"),
        } | {key: _mean_logged(logs, metric) for key, metric in LOGGED_DIAGNOSTICS.items()}
        folder = os.path.dirname(run["adapter"])
        if fit:
            own = _held_evaluation(runner, "pool", run["adapter"], folder, adapter_key(folder), name)
            out[name]["fit"] = {
                "pass@1": own["summary"]["pass@1"],
                "base": fit_base["summary"]["pass@1"],
                "paired": paired_difference(per_problem_scores(own, "pass@1"), fit_control, seed=0),
            }
        if diagnosis_problems:
            own = _held_evaluation(runner, "diagnosis", run["adapter"], folder, adapter_key(folder), name)
            out[name]["diagnosis"] = _diagnosis_row(own, diagnosis_base)
            evaluated[name] = own
    for name, folder in folders.items():
        adapter = os.path.join(folder, "adapter")
        evaluated[name] = _held_evaluation(runner, "diagnosis", adapter, folder, adapter_key(folder), name)
        out[name] = {"reference": True, "diagnosis": _diagnosis_row(evaluated[name], diagnosis_base)}
    if folders:
        yardstick = next(iter(folders))
        for name, own in evaluated.items():
            if name != yardstick:
                versus = _paired_both(own, evaluated[yardstick])
                out[name]["diagnosis"]["vs_reference"] = {"name": yardstick} | versus
    return out


def _paired_both(own: dict, other: dict) -> dict:
    """``{"paired", "paired_greedy"}``: ``own`` − ``other`` per problem, sampled pass@1 and greedy accuracy."""
    from ..stats import paired_difference, per_problem_scores

    return {
        key: paired_difference(per_problem_scores(own, metric), per_problem_scores(other, metric), seed=0)
        for key, metric in (("paired", "pass@1"), ("paired_greedy", "greedy"))
    }


def _diagnosis_row(own: dict, base: dict) -> dict:
    """A variant's sampled and greedy accuracy on the diagnosis set, and its paired differences with the base's."""
    row = {"pass@1": own["summary"]["pass@1"], "greedy": own["summary"]["greedy_accuracy"]}
    row |= {"base": base["summary"]["pass@1"], "base_greedy": base["summary"]["greedy_accuracy"]}
    return row | _paired_both(own, base)


def _held_evaluation(runner: _Runner, split: str, adapter: str | None, folder: str, model_key, name: str) -> dict:
    """The model (base, or with ``adapter``) on ``split`` (the pool, the diagnosis set), kept in chunks under
    ``folder``."""
    model, tokenizer = runner.load(adapter)
    result = runner.evaluate(model, tokenizer, split, f"{name} ({split})", resume=(folder, model_key))
    _free(model)
    return result


# what a variant's training logged, averaged over its steps: where its fork tokens' log-probs went, and its drift
LOGGED_DIAGNOSTICS = {
    "dlogp_pos": "fork/dlogp_pos",
    "dlogp_neg": "fork/dlogp_neg",
    "kl": "kl",
    "neg_floored": "fork/neg_floored",  # with neg_prob_floor: the share of negative fork tokens it exempted
}


def _mean_logged(log_history: Sequence[dict], metric: str) -> float | None:
    values = [float(entry[metric]) for entry in log_history if metric in entry]
    return sum(values) / len(values) if values else None


def aggregate(output_dir: str, pieces: PieceStore | str, expected: Sequence[str] = (), label: str = "default"):
    """``evidence.json`` (:func:`.report.build_evidence`), ``evidence_table.txt``, ``evidence_curve.png`` and
    ``evidence_curve_tokens.png`` (validation gain vs compute: GRPO's curves, ReasonMaxxer's point) and
    ``evidence_paired.png`` (paired differences with their CIs) under ``output_dir``, from whatever pieces
    ``pieces`` (a :class:`.pieces.PieceStore` or its folder) holds, without a model; ``expected`` names the pieces
    a complete run has (the missing ones are listed). Prints the table; returns the evidence."""
    store = pieces if isinstance(pieces, PieceStore) else PieceStore(pieces)
    evidence = build_evidence(store.load_all(), expected, git_commit()) | {"label": label}
    os.makedirs(output_dir, exist_ok=True)
    _save_json(evidence, output_dir, EVIDENCE_JSON)
    table = format_table(evidence)
    with open(os.path.join(output_dir, EVIDENCE_TABLE), "w") as f:
        f.write(table + "\n")
    validation = evidence["validation"] or {}
    for unit in COMPUTE_UNITS:
        curves = {m: c[unit] for m, c in evidence["curves"].items()}
        point = {"reasonmaxxer": (validation["compute"][unit], validation["gain"])} if "gain" in validation else {}
        if curves or point:
            suffix = "" if unit == "wall_s" else f"_{unit}"
            plot_curve(curves, point, os.path.join(output_dir, f"evidence_curve{suffix}.png"), unit)
    plot_paired(evidence, os.path.join(output_dir, "evidence_paired.png"))
    print(table, flush=True)
    return evidence


def _save_json(report: dict, output_dir: str, name: str) -> str:
    path = os.path.join(output_dir, name)
    os.makedirs(output_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)
    return path
