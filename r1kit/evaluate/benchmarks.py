"""What `r1kit eval --benchmark NAME` evaluates on, and how its results are written and shown.

NAME is a benchmark shipped inside r1kit (gsm8k, math500, aime24, aime25, amc23: their test split,
compared with the benchmark's own checker), ``tiny`` (the built-in task's held-out split), a GPQA set
from the hub (gpqa_diamond, gpqa_main, gpqa_extended: multiple choice, r1kit.data.choices), or a local
.jsonl/.json/.parquet/.csv file: multiple choice when its columns are GPQA's or question/choices/answer,
else question/answer rows read as ``data.source`` reads a file. Without ``--benchmark`` the recipe's
data section decides, as during training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from r1kit.data import benchmarks as shipped
from r1kit.data import choices
from r1kit.data.sources import FILE_SUFFIXES, DataError, load_data

EVAL_BENCHMARKS = ("tiny", *shipped.BENCHMARKS)  # offline; GPQA (hub) and local files come on top


def benchmark_data(name: str, data_cfg, limit: int | None) -> tuple[list[dict], str, str]:
    """(rows, data source, description) of a benchmark; `limit` keeps the first N problems (None: all).
    The source names the answer checker (r1kit.data.benchmarks.checker_for): multiple-choice rows,
    from GPQA or a file, have the source ``multiple_choice``."""
    if name in choices.GPQA_BENCHMARKS:
        rows, report = choices.load_gpqa(name)
        return rows[:limit], shipped.MULTIPLE_CHOICE, report.summary()
    if is_benchmark_file(name):
        loaded = choices.load_choice_file(name)
        if loaded is not None:
            return loaded[0][:limit], shipped.MULTIPLE_CHOICE, loaded[1].summary()
        cfg = dataclasses.replace(data_cfg, source=name, eval_source=None)
        rows, report = load_data(cfg, "all", size=limit)
        return rows, name, report.summary()
    if name == "tiny":
        cfg = dataclasses.replace(data_cfg, source="tiny_arith", eval_source=None)  # the named set, never eval_source
        rows, report = load_data(cfg, "heldout", size=limit or data_cfg.eval_size)
        return rows, cfg.source, report.origin
    if name not in shipped.BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; expected one of {', '.join(EVAL_BENCHMARKS)}, "
                        f"{', '.join(choices.GPQA_BENCHMARKS)} (hub), or a .jsonl/.json/.parquet/.csv file")
    cfg = dataclasses.replace(data_cfg, source=name, eval_source=None)
    rows, report = load_data(cfg, "test", size=limit)
    return rows, cfg.source, report.summary()


def is_benchmark_file(name: str) -> bool:
    """Whether `--benchmark NAME` names a local data file rather than a benchmark."""
    return name.endswith(FILE_SUFFIXES) or Path(name).is_file()


def benchmark_name(name: str) -> str:
    """The benchmark's name in output file names: a file's stem, else the name itself."""
    return Path(name).stem if is_benchmark_file(name) else name


def write_items(path: str | Path, items: list[dict]) -> None:
    """One JSON object per problem: the greedy completion and answer, the samples, pass@k and maj@k."""
    with open(path, "w") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def summary_table(title: str, summary: dict):
    """A rich Table of the summary: accuracies as percentages, the rest as numbers."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        is_share = key in ("greedy_accuracy", "sampled_pass1", "truncated", "reasoning_share", "no_answer") \
            or key.startswith(("pass@", "maj@"))
        text = f"{100 * value:.1f}%" if is_share else f"{value:.1f}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    return table
