"""What `r1kit eval --benchmark NAME` evaluates on, and how its results are written and shown.

NAME is a benchmark shipped inside r1kit (gsm8k, math500, aime24, aime25, amc23: their test split,
compared with the benchmark's own checker) or ``tiny`` (the built-in task's held-out split). Without
``--benchmark`` the recipe's data section decides, as during training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from r1kit.data import benchmarks as shipped
from r1kit.data.sources import DataError, load_data

EVAL_BENCHMARKS = ("tiny", *shipped.BENCHMARKS)


def benchmark_data(name: str, data_cfg, limit: int | None) -> tuple[list[dict], str, str]:
    """(rows, data source, description) of a benchmark; `limit` keeps the first N problems (None: all).
    The source names the answer checker (r1kit.data.benchmarks.checker_for)."""
    if name == "tiny":
        cfg = dataclasses.replace(data_cfg, source="tiny_arith", eval_source=None)  # the named set, never eval_source
        rows, report = load_data(cfg, "heldout", size=limit or data_cfg.eval_size)
        return rows, cfg.source, report.origin
    if name not in shipped.BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; expected one of {', '.join(EVAL_BENCHMARKS)}")
    cfg = dataclasses.replace(data_cfg, source=name, eval_source=None)
    rows, report = load_data(cfg, "test", size=limit)
    return rows, cfg.source, report.summary()


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
