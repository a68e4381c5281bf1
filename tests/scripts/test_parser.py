"""The parser every command shares: ``--config`` recipes and the one ``--quick`` (no model)."""

from dataclasses import dataclass, field

import pytest
import yaml

from trl_reasonmaxxer.scripts.parser import QuickArguments, ScriptParser


@dataclass
class Budget(QuickArguments):
    QUICK = dict(steps=2, tokens=8, output_dir="out-quick")

    steps: int = 100
    tokens: int = 256
    output_dir: str = "out"
    name: str = "run"


@dataclass
class Other:
    seed: int = field(default=42, metadata={"help": "a seed"})


def parse(*argv, types=(Budget, Other)):
    return ScriptParser(types).parse_args_and_config(list(argv))


def recipe(tmp_path, **values):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_without_quick_the_recipe_sets_defaults_and_flags_win(tmp_path):
    budget, other = parse("--config", recipe(tmp_path, steps=50, name="r", seed=1), "--steps", "7")
    assert (budget.steps, budget.tokens, budget.name, other.seed, budget.quick) == (7, 256, "r", 1, False)


def test_quick_replaces_defaults_and_recipe_values_but_not_flags(tmp_path):
    config = recipe(tmp_path, steps=50, tokens=512, name="r", seed=1)
    budget, other = parse("--config", config, "--quick", "--tokens", "3")
    assert (budget.steps, budget.tokens, budget.output_dir) == (2, 3, "out-quick")
    assert (budget.name, other.seed) == ("r", 1)  # what --quick does not name keeps the recipe's value
    budget, _ = parse("--config", recipe(tmp_path, quick=True, steps=50))  # quick: true in the recipe itself
    assert (budget.quick, budget.steps) == (True, 2)
    budget, _ = parse("--quick", "false")
    assert (budget.quick, budget.steps) == (False, 100)


def test_quick_settings_must_be_arguments_of_the_command():
    @dataclass
    class Broken(QuickArguments):
        QUICK = dict(stepz=2)

        steps: int = 100

    with pytest.raises(ValueError, match=r"Broken.QUICK names \['stepz'\]"):
        parse("--quick", types=(Broken,))


def test_help_lists_the_config_flag(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--config FILE.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "demo", "compare"])
def test_every_generating_command_takes_the_llama_cpp_switch(command):
    """``--use_llama_cpp true|false`` (unset: auto) and ``--llama_cpp_model_path`` on every command that samples."""
    import importlib

    parser = importlib.import_module(f"trl_reasonmaxxer.scripts.{command}").make_parser()

    def switch(*argv):
        holders = [obj for obj in parser.parse_args_and_config(list(argv)) if hasattr(obj, "use_llama_cpp")]
        assert len(holders) == 1
        return holders[0].use_llama_cpp, holders[0].llama_cpp_model_path

    assert switch() == (None, None)
    assert switch("--use_llama_cpp", "false") == (False, None)
    assert switch("--use_llama_cpp", "true", "--llama_cpp_model_path", "m.gguf") == (True, "m.gguf")
    if command == "compare":
        _, budget = parser.parse_args_and_config(["--grpo_use_llama_cpp", "true"])
        assert budget.grpo_use_llama_cpp is True and parser.parse_args_and_config([])[1].grpo_use_llama_cpp is None
