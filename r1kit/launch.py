"""`r1kit launch [accelerate launch options] COMMAND ...`: Accelerate's launcher, ending a failed run in one line.

`accelerate launch ... -m r1kit train RECIPE` ends a failed run with torch's launcher report (which rank failed,
the launcher's own Python traceback and its log lines) after the rank's own `r1kit train: error: ...` line; a
rank cannot silence the launcher above it. This command runs Accelerate's own launch command in this process
with the same options, and turns that report into one line naming the rank that failed first and its exit code.
The ranks' own lines, which say what went wrong, stay above it. Everything else is Accelerate's launch.
"""

from __future__ import annotations

import argparse
import logging
import subprocess

from r1kit.config import ConfigError

LAUNCHED = ("train", "sft", "generate", "eval")  # the commands that run under a launcher
EXAMPLE = "r1kit launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 train RECIPE [key=value ...]"


class LaunchFailed(RuntimeError):
    """A launched process failed; its own error line is above (the message names the rank and exit code)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r1kit launch", usage="r1kit launch [accelerate launch options] {train,sft,generate,eval} [ARGS ...]",
        description="`accelerate launch [options] -m r1kit COMMAND [ARGS ...]`, with a failed run ending in one line "
                    "that names the rank that failed (the launcher's report and traceback left out). Every option "
                    f"before the command is Accelerate's (`accelerate launch --help`). Example: {EXAMPLE}")
    p.add_argument("command", choices=LAUNCHED, help="the r1kit command each process runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its recipe, overrides and options")
    return p


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Accelerate's options, the r1kit command and its arguments): the command is the first of LAUNCHED."""
    at = next((i for i, arg in enumerate(argv) if arg in LAUNCHED), None)
    if at is None:
        raise ConfigError(f"name the command to run after Accelerate's options "
                          f"({', '.join(LAUNCHED)}), e.g. {EXAMPLE}")
    return argv[:at], argv[at:]


def launch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        parser().parse_args(argv or ["--help"])
    options, command = split(argv)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args([*options, "--module", "r1kit", *command])
    # the elastic agent logs each failure and each process it stops; the line below says the same once
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        others = len(e.failures) - 1
        stopped = f"; the launcher stopped the other {others}" if others else ""
        raise LaunchFailed(f"rank {rank} of `r1kit {command[0]}` exited with code {failure.exitcode}{stopped} "
                           f"(its error is above)") from None
    except subprocess.CalledProcessError as e:  # one process: Accelerate runs it as a subprocess
        raise LaunchFailed(f"`r1kit {command[0]}` exited with code {e.returncode} (its error is above)") from None
