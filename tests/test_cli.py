"""The ``trl-reasonmaxxer`` dispatcher: every command is a script with the same flag style and ``--config``."""

import importlib

import pytest

from trl_reasonmaxxer import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_shows_snake_case_flags_and_config_in_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: trl-reasonmaxxer {command} ")
    assert "--config FILE.yaml" in text and "--output_dir" in text
    if command != "export":  # the commands that generate share GRPOConfig's name for the token budget
        assert "--max_completion_length" in text


def test_every_command_module_is_a_script():
    for module, _ in cli.COMMANDS.values():
        script = importlib.import_module(f"trl_reasonmaxxer.{module}")
        assert callable(script.make_parser) and callable(script.main)


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit):
        cli.main([])
    assert "required: command" in capsys.readouterr().err
