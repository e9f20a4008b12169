"""The CLI reference, read from the argparse parsers of every command in ``r1kit.cli.COMMANDS``.

r1kit's commands build their parsers inside the command functions (each parses first and imports its heavy
modules after). To read a parser without running the command, each command is called with ``--help`` while
argparse's parse methods are replaced by one that raises with the parser it was called on; the command never
gets past that call. A command that reads only some flags itself and takes the rest as a recipe and overrides
(``parse_known_args``: train, sft) is shown with ``[RECIPE] [key=value ...]``. A command that returns
without building a parser is an error naming it, so every command of the CLI is documented.

    python docs/hooks/cli_reference.py           # print the page
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document this checkout's r1kit, not an installed one
    sys.path.insert(0, str(ROOT))

PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")


class ParserFound(Exception):
    def __init__(self, parser: argparse.ArgumentParser, method: str):
        super().__init__(method)
        self.parser, self.method = parser, method


@contextlib.contextmanager
def parsers_intercepted():
    saved = {name: getattr(argparse.ArgumentParser, name) for name in PARSE_METHODS}

    def stopper(method):
        def stop(self, *args, **kwargs):
            raise ParserFound(self, method)
        return stop

    for name in PARSE_METHODS:
        setattr(argparse.ArgumentParser, name, stopper(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(argparse.ArgumentParser, name, method)


def command_parser(name: str) -> tuple[argparse.ArgumentParser, bool]:
    """(the parser of `r1kit NAME`, whether the command takes a recipe and overrides beyond it)."""
    from r1kit.cli import COMMANDS

    with parsers_intercepted():
        try:
            COMMANDS[name](["--help"])
        except ParserFound as found:
            return found.parser, found.method == "parse_known_args"
    raise RuntimeError(f"r1kit {name}: the command returned without parsing its arguments with argparse, so the CLI "
                       "reference cannot document it (docs/hooks/cli_reference.py)")


def help_text(name: str) -> str:
    """What `r1kit NAME --help` prints, at a fixed width (the page must not depend on the terminal)."""
    parser, takes_recipe = command_parser(name)
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"
    try:
        parser.prog = f"r1kit {name}"
        text = parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    if takes_recipe:  # the flags parser reads its own options; the rest is RECIPE and key=value overrides
        usage, _, rest = text.partition("\n")
        usage = usage.replace(f"usage: r1kit {name}", f"usage: r1kit {name} [RECIPE] [key=value ...]")
        text = (usage + "\n\npositional arguments:\n"
                "  RECIPE              a YAML recipe (default: the built-in tiny world)\n"
                "  key=value           overrides, e.g. train.max_steps=50 (see the configuration reference)\n"
                + rest)
    return text.rstrip("\n")


def cli_page() -> str:
    from r1kit.cli import COMMANDS, USAGE

    out = ["# CLI reference", "",
           "Generated from the argument parsers in `r1kit/cli.py` (and the modules its commands call) when the site "
           "is built: each section is what `r1kit COMMAND --help` prints. Commands that take a recipe also take "
           "`key=value` overrides of any [configuration key](config.md), and launch the same way under "
           "`accelerate launch ... -m r1kit COMMAND`.", "", "## Examples", "", "```text", USAGE.rstrip(), "```"]
    for name in COMMANDS:
        out += ["", f"## r1kit {name}", "", "```text", help_text(name), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(cli_page())
