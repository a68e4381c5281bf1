"""The TRL-style training script (``trl-reasonmaxxer train`` / ``examples/reasonmaxxer.py``), its recipe and the
accelerate configs, on the tiny model and local datasets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, DatasetDict

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.scripts.train import (
    ReasonMaxxerScriptArguments,
    checkpoint_to_resume,
    ignored_arguments,
    main,
    make_parser,
)

from ..helpers import LocalHub


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMPTS = [f"what is {i} plus {i} ?" for i in range(4)]


def write_recipe(path: Path, model_dir: str, dataset: Path, output_dir: Path, **overrides) -> Path:
    recipe = dict(
        model_name_or_path=model_dir,
        dataset_name=str(dataset),
        reward_funcs=["tests.helpers.alternating_reward"],
        output_dir=str(output_dir),
        num_generations=4,
        max_completion_length=3,
        temperature=1.0,
        max_steps=5,
        learning_rate=1e-3,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        rollout_chunk_size=2,
        fork_fraction=0.5,
        warmup_steps=0,
        logging_steps=1,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    recipe.update(overrides)
    path.write_text(yaml.safe_dump(recipe))
    return path


def parse(*argv):
    return make_parser().parse_args_and_config(args=list(argv))


def run(argv):
    return main(*parse(*argv))


def test_train_command_runs_a_yaml_recipe_on_a_local_jsonl_dataset(tiny_model_dir, tmp_path, caplog):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": str(2 * i)}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, data, out)
    caplog.set_level(logging.WARNING)

    # flags win over the recipe (max_steps 5 → 2); --lora_r without --use_peft is reported, not silently dropped
    cli.main(["train", "--config", str(recipe), "--max_steps", "2", "--lora_r", "8"])

    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 32  # the paper's LoRA
    messages = [r.getMessage() for r in caplog.records]
    assert any("lora_r has no effect without --use_peft" in m for m in messages)
    card = (out / "README.md").read_text()
    assert "`max_steps` | 2" in card and "`pool/prompts` | 4" in card


def test_script_uses_peft_flags_a_saved_dataset_dict_and_num_problems(tiny_model_dir, tmp_path):
    folder = tmp_path / "data"
    prompts = Dataset.from_dict({"prompt": PROMPTS, "answer": ["0", "2", "4", "6"]})
    DatasetDict({"train": prompts, "test": prompts.select([0])}).save_to_disk(str(folder))
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, folder, tmp_path / "out", max_steps=1)
    trainer = run(
        [
            "--config",
            str(recipe),
            "--use_peft",
            "--lora_r",
            "4",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--num_problems",
            "2",
        ]
    )
    lora = trainer.model.peft_config["default"]
    assert lora.r == 4 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert trainer.pool_stats["pool/prompts"] == 2
    assert trainer.offline.prompt_dataset["prompt"] == PROMPTS[:2]


def test_push_to_hub_flag_uploads_the_adapter_and_card(tiny_model_dir, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    data = tmp_path / "prompts.parquet"
    Dataset.from_dict({"prompt": PROMPTS}).to_parquet(str(data))
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, data, tmp_path / "out", max_steps=1)
    run(["--config", str(recipe), "--push_to_hub", "--hub_model_id", "someone/tiny"])
    repo = hub.root / "someone" / "tiny"
    assert hub.uploads == 1 and (repo / "adapter_model.safetensors").is_file()
    card = (repo / "README.md").read_text()
    assert "## ReasonMaxxer training" in card
    assert "huggingface.co/datasets" not in card  # a local file is not linked as a Hub dataset


def test_load_in_4bit_on_this_cpu_machine_gives_one_clear_error(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.json"
    data.write_text(json.dumps([{"prompt": p} for p in PROMPTS]))
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, data, tmp_path / "out")
    with pytest.raises(ValueError, match="needs bitsandbytes and a CUDA GPU") as info:
        run(["--config", str(recipe), "--load_in_4bit"])
    assert "drop --load_in_4bit" in str(info.value)
    assert not (tmp_path / "out" / "rollouts").exists()  # failed before any work


def test_arguments_without_effect_are_named(tmp_path):
    script_args, training_args, model_args = parse(
        "--output_dir",
        str(tmp_path),
        "--use_cpu",
        "--dataset_name",
        "gsm8k",
        "--dataset_config",
        "main",
        "--eval_strategy",
        "steps",
        "--lora_alpha",
        "8",
        "--use_dora",
    )
    messages = ignored_arguments(script_args, training_args, model_args)
    assert messages[0].startswith("lora_alpha, use_dora have no effect without --use_peft")
    assert "dataset_config has no effect: 'gsm8k' is a packaged task." in messages
    assert any(m.startswith("eval_strategy='steps' has no effect") and "trl-reasonmaxxer eval" in m for m in messages)
    script_args, training_args, model_args = parse(
        "--output_dir", str(tmp_path), "--use_cpu", "--use_peft", "--lora_r", "4"
    )
    assert ignored_arguments(script_args, training_args, model_args) == []


def test_streaming_dataset_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="dataset_streaming is not supported.*Drop --dataset_streaming"):
        main(*parse("--output_dir", str(tmp_path), "--use_cpu", "--dataset_streaming"))


def test_quick_shrinks_the_recipe_but_flags_win(tmp_path):
    quick = ReasonMaxxerScriptArguments.QUICK
    recipe = EXAMPLES / "recipes" / "svamp.yaml"
    script_args, training_args, _ = parse("--config", str(recipe), "--use_cpu", "--quick")
    assert script_args.num_problems == quick["num_problems"]  # the recipe's 300 gives way to the smoke run
    assert (training_args.num_generations, training_args.max_steps) == (quick["num_generations"], quick["max_steps"])
    assert (
        training_args.learning_rate == 1e-4 and training_args.output_dir == "runs/svamp-reasonmaxxer"
    )  # the rest stays
    script_args, training_args, _ = parse(
        "--config", str(recipe), "--use_cpu", "--quick", "--num_generations", "2", "--max_completion_length", "3"
    )
    assert (training_args.num_generations, training_args.max_completion_length) == (2, 3)
    assert script_args.num_problems == quick["num_problems"] and training_args.max_problems == quick["max_problems"]


def test_resume_flag_values():
    assert checkpoint_to_resume("true") is True and checkpoint_to_resume("last") is True
    assert (
        checkpoint_to_resume("runs/x/checkpoint-20") == "runs/x/checkpoint-20" and checkpoint_to_resume(None) is None
    )


def test_train_help_lists_every_argument_group(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--reward_funcs", "--num_problems", "--fork_fraction", "--load_in_4bit", "--use_peft", "--config"):
        assert flag in text, flag


def test_shipped_recipe_parses_and_accelerate_configs_load(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    script_args, training_args, model_args = parse("--config", str(EXAMPLES / "recipes" / "svamp.yaml"), "--use_cpu")
    assert (script_args.dataset_name, script_args.reward_funcs, model_args.model_name_or_path) == (
        "svamp",
        ["math_accuracy_reward"],
        "default",
    )
    assert (training_args.num_generations, training_args.max_problems, training_args.fork_fraction) == (20, 50, 0.03)
    expected = {
        "single_gpu": "NO",
        "multi_gpu": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
    }
    for name, kind in expected.items():
        config = load_config_from_file(str(EXAMPLES / "accelerate_configs" / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
