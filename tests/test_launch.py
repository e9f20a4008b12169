"""`r1kit launch`: Accelerate's options, then the r1kit command (the launch itself: tests/test_distributed.py)."""

import pytest

from r1kit import cli
from r1kit.launch import split


@pytest.mark.parametrize("argv, options, command", [
    (["--config_file", "z.yaml", "--num_processes", "2", "train", "r.yaml", "a.b=1"],
     ["--config_file", "z.yaml", "--num_processes", "2"], ["train", "r.yaml", "a.b=1"]),
    (["sft"], [], ["sft"]),
    (["--num_processes", "2", "eval", "runs/x/final", "--benchmark", "train"],  # the first command name is the command
     ["--num_processes", "2"], ["eval", "runs/x/final", "--benchmark", "train"]),
])
def test_accelerates_options_come_before_the_command(argv, options, command):
    assert split(argv) == (options, command)


def test_no_command_is_one_line(capsys):
    assert cli.main(["launch", "--config_file", "recipes/accelerate/ddp.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("r1kit launch: error: name the command to run after Accelerate's")


def test_help_names_the_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["launch", "--help"])
    assert stop.value.code == 0 and "{train,sft,generate,eval}" in capsys.readouterr().out
