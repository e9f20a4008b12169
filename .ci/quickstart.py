"""The README's quick start, for CI to run exactly as printed, and the test files a fresh environment skipped.

    python .ci/quickstart.py commands README.md     the two command lines of the one ```bash block under
                                                    '## Quick start', one per line, as printed (a line that is
                                                    only a comment continues the one above and is not a command)
    python .ci/quickstart.py skipped REPORT.xml     the tests a pytest --junitxml report skipped for a missing
                                                    package or tool, one node id per line

Anything else than one block of two commands under the heading fails with one line naming what was found.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HEADING = "## Quick start"
INSTALL_REASON = re.compile(r"install|could not import")
COMMANDS = 2


def quickstart_commands(readme: str) -> list[str]:
    lines = readme.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == HEADING]
    if len(starts) != 1:
        raise ValueError(f"expected one '{HEADING}' heading, found {len(starts)}")
    blocks, block = [], None
    for line in lines[starts[0] + 1:]:
        fence = line.strip().startswith("```")
        if block is None and line.startswith(("# ", "## ")):  # the next heading (inside a block, "# " is a comment)
            break
        if block is None and fence:
            block = {"lang": line.strip()[3:].strip(), "lines": []}
        elif fence:
            blocks.append(block)
            block = None
        elif block is not None:
            block["lines"].append(line)
    if block is not None:
        raise ValueError(f"a ``` block under '{HEADING}' is not closed")
    bash = [b for b in blocks if b["lang"] == "bash"]
    if len(bash) != 1:
        raise ValueError(f"expected one ```bash block under '{HEADING}', found {len(bash)}")
    commands = [line.rstrip() for line in bash[0]["lines"] if line.strip() and not line.strip().startswith("#")]
    if len(commands) != COMMANDS:
        raise ValueError(f"expected {COMMANDS} command lines in the ```bash block under '{HEADING}' (the install line "
                         f"and the test command), found {len(commands)}: {commands}")
    return commands


def tests_skipped_for_an_install(report: str, root: Path) -> list[str]:
    """Node ids (files for a module skipped whole) of the tests a junit report marks skipped for a missing package
    or tool: their reason says what to install ("pip install ...", "apt-get install ...") or pytest.importorskip's
    "could not import". Skips for this machine's hardware (no CUDA, no oneDNN bf16) stay skipped and are left out."""
    ids = []
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None or not INSTALL_REASON.search(f"{skipped.get('message', '')} {skipped.text or ''}"):
            continue
        classname, name = case.get("classname", ""), case.get("name", "")
        dotted = (classname or name).split(".")  # a whole module skipped at collection: classname "", name its path
        for end in range(len(dotted), 0, -1):
            path = Path(*dotted[:end]).with_suffix(".py")
            if (root / path).is_file():
                ids.append("::".join([path.as_posix(), *dotted[end:], *([name] if classname else [])]))
                break
        else:
            raise ValueError(f"no test file for the skipped testcase {classname}.{name}")
    return ids


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("commands", "skipped"):
        print(__doc__, file=sys.stderr)
        return 2
    what, path = argv
    try:
        found = (quickstart_commands(Path(path).read_text()) if what == "commands"
                 else tests_skipped_for_an_install(path, Path.cwd()))
    except (OSError, ValueError, ET.ParseError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
