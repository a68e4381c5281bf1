"""A comparison in pieces: one small JSON file per finished (method, seed), so a run longer than one sitting resumes
where it stopped, and the results can be committed and aggregated while others are still missing.

Layout of a pieces folder (``<output_dir>/pieces`` unless ``--pieces_dir`` says otherwise)::

    base.json                      the base model: validation, test (and transfer) evaluations
    reasonmaxxer-seed0.json        ReasonMaxxer, seed 0: its fork sweep on validation, the chosen run's test evaluation
    grpo_equal-seed0.json          GRPO at ReasonMaxxer's token compute of the same seed (grpo_3x: three times it)
    reasonmaxxer_random-seed0.json the gate ablation (``--gate_ablation``)

Each piece holds its ``method``, ``seed``, the ``commit`` it ran at, the ``settings`` it ran with, the engines, the
cost ledger and compute, and the raw per-problem evaluation records (answers and correctness, no completion texts).
A piece is trusted only if its schema is this one and its settings are the run's: every budget field of
``CompareConfig``, the model, data, split, reward and evaluation seed (not which seeds or methods run now, which
only choose the pieces). The base model's piece is held only to :data:`EVALUATION_SETTINGS` (what its evaluations
depend on), so a training knob changed on validation does not cost its hour of evaluation again. A piece that
differs is refused with the settings that differ.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict


PIECE_SCHEMA = "trl_reasonmaxxer.compare.piece/1"
GATE_ABLATION = ("random", "all")
# what the base model's evaluations depend on: the data and its splits, the model, reward and evaluation protocol
EVALUATION_SETTINGS = frozenset(
    {
        "model",
        "dataset_name",
        "split_seed",
        "reward_func",
        "eval_seed",
        "split_ids",
        "num_pool_problems",
        "num_validation_problems",
        "num_test_problems",
        "transfer_dataset_name",
        "num_transfer_problems",
        "max_completion_length",
        "num_samples",
        "num_validation_samples",
        "prompt_style",
        "use_llama_cpp",
        "llama_cpp_model_path",
    }
)


def piece_name(method: str, seed: int | None = None) -> str:
    """``"base"`` for the base model, else ``"<method>-seed<seed>"`` (the file name without ``.json``)."""
    return method if seed is None else f"{method}-seed{seed}"


def grpo_method_name(multiple: float) -> str:
    """``grpo_equal`` for GRPO at ReasonMaxxer's compute, ``grpo_3x`` at three times it, ``grpo_0.5x``..."""
    if multiple <= 0:
        raise ValueError(f"A GRPO compute multiple must be positive, got {multiple}.")
    return "grpo_equal" if multiple == 1 else f"grpo_{multiple:g}x"


def grpo_methods(multiples: Sequence[float]) -> dict[str, float | None]:
    """GRPO method name → its multiple of ReasonMaxxer's compute; ``{"grpo": None}`` (``grpo_max_steps``) without
    multiples."""
    if not multiples:
        return {"grpo": None}
    names = {grpo_method_name(m): float(m) for m in multiples}
    if len(names) != len(multiples):
        raise ValueError(f"grpo_compute_multiples repeats a value: {list(multiples)}.")
    return names


def plan_pieces(multiples: Sequence[float], seeds: Sequence[int], gate_ablation: bool) -> list[tuple[str, int | None]]:
    """Every ``(method, seed)`` of a comparison in run order: the base model, then per seed ReasonMaxxer (whose
    compute sets GRPO's budget and whose fork choice the ablation reuses), GRPO, and the gate ablation."""
    methods = ["reasonmaxxer", *grpo_methods(multiples)]
    if gate_ablation:
        methods += [f"reasonmaxxer_{gate}" for gate in GATE_ABLATION]
    return [("base", None)] + [(method, seed) for seed in seeds for method in methods]


def select_methods(plan: Sequence[tuple[str, int | None]], methods: Iterable[str] | None) -> list:
    """The part of ``plan`` whose method is in ``methods`` (all of it for None); the base model is always kept,
    since every other piece is paired with it (it is run once, then loaded)."""
    if methods is None:
        return list(plan)
    known = list(dict.fromkeys(m for m, _ in plan))
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}: this comparison has {', '.join(known)}.")
    return [(m, s) for m, s in plan if m == "base" or m in methods]


def piece_settings(
    model: str, dataset_name: str, split_seed: int, reward_func: str, budget, eval_seed: int, split_ids: str
) -> dict:
    """What a piece must share with the others to be compared with them, as JSON types."""
    settings = {
        "model": model,
        "dataset_name": dataset_name,
        "split_seed": split_seed,
        "reward_func": reward_func,
        **asdict(budget),
        "eval_seed": eval_seed,
        "split_ids": split_ids,
    }
    return json.loads(json.dumps(settings))


def settings_differences(
    found: Mapping, wanted: Mapping, against: str = "this run", keys: Iterable[str] | None = None
) -> list[str]:
    """``"name=found (this run: wanted)"`` for every setting (of ``keys``, when given) that differs (or that one of
    them lacks)."""
    missing = object()
    out = []
    names = set(found) | set(wanted)
    for key in sorted(names if keys is None else names & set(keys)):
        a, b = found.get(key, missing), wanted.get(key, missing)
        if a != b:
            show = lambda v: "unset" if v is missing else json.dumps(v)
            out.append(f"{key}={show(a)} ({against}: {show(b)})")
    return out


def check_piece(
    piece: object, where: str, settings: Mapping | None = None, against: str = "this run", base_reference=False
) -> dict:
    """``piece`` if it is a piece of this schema (made with ``settings``, when given: those of ``against``; only
    their :data:`EVALUATION_SETTINGS` when ``piece`` or, with ``base_reference``, ``against`` is the base model's);
    else a ValueError that says why, naming the settings that differ."""
    if not isinstance(piece, dict) or piece.get("schema") != PIECE_SCHEMA:
        found = piece.get("schema") if isinstance(piece, dict) else type(piece).__name__
        raise ValueError(
            f"{where} is not a comparison piece of schema {PIECE_SCHEMA!r} (found {found!r}). Every .json file in "
            "the pieces folder is read as a piece: move other files (a report, say) out of it, or delete a damaged "
            "piece to run it again."
        )
    for key in ("method", "settings", "test"):
        if key not in piece:
            raise ValueError(f"{where} lacks {key!r}: it is damaged; delete it to run that piece again.")
    if settings is not None:
        keys = EVALUATION_SETTINGS if piece["method"] == "base" or base_reference else None
        differ = settings_differences(piece["settings"], settings, against, keys)
        if differ:
            raise ValueError(
                f"{where} was made with other settings than {against}: {'; '.join(differ)}. Their results cannot be "
                "paired: run with the settings it was made with, or use another --pieces_dir (or move it away)."
            )
    return piece


class PieceStore:
    """The pieces folder: :meth:`load` one (checked), :meth:`save` one (atomically), :meth:`load_all`."""

    def __init__(self, folder: str, settings: Mapping | None = None):
        self.folder, self.settings = folder, settings

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.json")

    def check_report_path(self, path: str, flag: str = "--out") -> None:
        """Refuse to write a report (``path``, given by ``flag``) into the folder before any work: every later run
        would read it as a piece and stop."""
        if os.path.abspath(os.path.dirname(path) or ".") == os.path.abspath(self.folder):
            raise ValueError(
                f"{flag} {path} is in the pieces folder {self.folder}, where every .json file is read as a "
                f"comparison piece: write it elsewhere (default: docs/results/)."
            )

    def load(self, name: str) -> dict | None:
        """The piece ``name``, checked against this run's settings; None when it does not exist."""
        path = self.path(name)
        if not os.path.exists(path):
            return None
        return check_piece(_read_json(path), path, self.settings)

    def save(self, name: str, piece: dict) -> dict:
        """Write ``piece`` (with the schema, name, commit and settings added) and return it."""
        piece = {"schema": PIECE_SCHEMA, "name": name, "commit": git_commit(), "settings": self.settings, **piece}
        os.makedirs(self.folder, exist_ok=True)
        tmp = self.path(name) + ".tmp"
        with open(tmp, "w") as f:  # compact: hundreds of per-problem records, committed to the repository
            json.dump(piece, f, separators=(",", ":"), default=str)
        os.replace(tmp, self.path(name))
        return piece

    def load_all(self) -> dict[str, dict]:
        """Every piece of the folder, by name, checked against this run's settings or, without them, against each
        other: every piece against the base model's (its evaluation settings), the trained ones against the first
        trained one (all settings)."""
        if not os.path.isdir(self.folder):
            return {}
        names = sorted(n[: -len(".json")] for n in os.listdir(self.folder) if n.endswith(".json"))
        pieces = {name: check_piece(_read_json(self.path(name)), self.path(name), self.settings) for name in names}
        if self.settings is None:
            trained = [name for name in names if pieces[name]["method"] != "base"]
            if "base" in pieces:
                for name in trained:
                    check_piece(pieces[name], self.path(name), pieces["base"]["settings"], "base.json", True)
            for name in trained[1:]:
                check_piece(pieces[name], self.path(name), pieces[trained[0]]["settings"], f"{trained[0]}.json")
        return pieces


def trained_pieces(pieces: Mapping[str, dict], names: Sequence[str] | None, where: str) -> list[str]:
    """``names`` (default: every trained piece of ``pieces``, sorted) once each is a trained piece there; else a
    ValueError naming those that are not and the trained pieces ``where`` holds."""
    trained = sorted(n for n, p in pieces.items() if p["method"] != "base")
    unknown = [n for n in names if n not in trained] if names else []
    if unknown:
        raise ValueError(f"No trained piece {unknown} in {where}; it has: {', '.join(trained) or 'none'}.")
    return list(names) if names else trained


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as JSON ({err}); delete it to run that piece again.") from err


def git_commit() -> str:
    """The commit this package's checkout is at (``git rev-parse HEAD``), with ``-dirty`` when tracked files differ
    from it; ``"unknown"`` outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=here, timeout=30).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "") if head else "unknown"
