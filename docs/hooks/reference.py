"""mkdocs hook: the pages that are generated, not written, so that they cannot drift from the code.

- ``reference/config.md``: every configuration key (config_reference.py, from r1kit/config.py);
- ``reference/cli.md``: every command's arguments (cli_reference.py, from r1kit/cli.py's parsers);
- ``reference/benchmarks.md``: every results file under benchmarks/results (bench_tables.py).

A written page shows the tables of one kind of results where it writes ``<!-- bench: KIND -->`` on a line of
its own (e.g. ``<!-- bench: vs_trl -->``); an unknown kind fails the build, naming the page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_tables  # noqa: E402  (beside this file; mkdocs loads hooks by path)
import cli_reference  # noqa: E402
import config_reference  # noqa: E402

BENCH_MARKER = re.compile(r"^<!-- bench: ([a-z_]+) -->$", re.MULTILINE)
GENERATED = {
    "reference/config.md": config_reference.config_page,
    "reference/cli.md": cli_reference.cli_page,
    "reference/benchmarks.md": bench_tables.benchmarks_page,
}


def on_files(files, config):
    from mkdocs.structure.files import File

    for path, make in GENERATED.items():
        if files.get_file_from_path(path) is not None:
            raise ValueError(f"docs/{path} is generated at build time (docs/hooks/reference.py); delete the file")
        files.append(File.generated(config, path, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    def table(match: re.Match) -> str:
        try:
            return bench_tables.render_kind(match.group(1))
        except KeyError as e:
            raise ValueError(f"{page.file.src_path}: {e.args[0]}") from None

    return BENCH_MARKER.sub(table, markdown)
