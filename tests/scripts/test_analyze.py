"""``trl-reasonmaxxer analyze`` on the tiny model: a base model with an adapter, or a separate teacher model."""

import json
import os

import pytest
from datasets import Dataset

from trl_reasonmaxxer import cli
from trl_reasonmaxxer.scripts.analyze import make_parser


def test_the_teacher_is_given_exactly_once():
    with pytest.raises(ValueError, match="Give the teacher in one way"):
        make_parser().parse_args_and_config([])
    with pytest.raises(ValueError, match="Give the teacher in one way"):
        make_parser().parse_args_and_config(["--adapter", "a", "--teacher", "b"])
    script_args, config = make_parser().parse_args_and_config(["--adapter", "a", "--quick", "--batch_size", "3"])
    assert (script_args.num_problems, config.max_completion_length, config.batch_size) == (4, 160, 3)
    script_args, config = make_parser().parse_args_and_config(["--teacher", "b", "--policies", "oracle"])
    assert (script_args.num_problems, config.max_completion_length, config.policies) == (32, 256, ["base", "oracle"])


def test_cli_analyze_with_an_adapter_and_with_a_teacher_model(tiny_pair, tiny_model_dir, tmp_path, capsys):
    model, _ = tiny_pair
    adapter = str(tmp_path / "adapter")
    model.save_pretrained(adapter)
    common = ["--model_name_or_path", tiny_model_dir, "--num_problems", "2", "--max_completion_length", "3"]
    common += ["--batch_size", "2"]
    # a rollout pool as the trainer saves it: the τ curve is then computed on its completions, scored by the base
    pool = Dataset.from_dict({"prompt_ids": [[5, 6, 7], [8, 9]], "completion_ids": [[10, 11, 12, 13], [14, 15]]})
    pool.save_to_disk(str(tmp_path / "pool"))
    cli.main(
        [
            "analyze",
            *common,
            "--adapter",
            adapter,
            "--pool",
            str(tmp_path / "pool"),
            "--output_dir",
            str(tmp_path / "a"),
        ]
    )
    assert "intervention" in capsys.readouterr().out
    with open(tmp_path / "a" / "analysis.json") as f:
        calibration = json.load(f)["calibration"]
    assert calibration["source"] == "rollout pool" and calibration["tokens"] == 6
    assert sorted(os.listdir(tmp_path / "a")) == sorted(
        ["analysis.json", "analysis.txt", "entropy.png", "rank.png", "interventions.png", "tau.png"]
    )
    # a teacher identical to the base: no position differs, so no intervention changes anything
    cli.main(["analyze", *common, "--teacher", tiny_model_dir, "--output_dir", str(tmp_path / "b")])
    with open(tmp_path / "b" / "analysis.json") as f:
        report = json.load(f)
    assert report["divergence"]["unshifted"]["percent"] == 100.0
    assert report["interventions"]["oracle"]["changed_fraction"] == 0.0
    assert report["teacher"] == tiny_model_dir and report["task"] == "svamp"
