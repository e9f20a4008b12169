"""Dataset sources: every source yields rows ``{"question": str, "answer": str, ...}``.

Sources by `data.source`:
  tiny_arith                the built-in procedural task (r1kit.data.tasks); splits train / heldout
  path/to/file.jsonl|.parquet|.csv   a local file (the split name is ignored)
  owner/name                a Hugging Face hub dataset, loaded with `datasets` (needs internet)

Columns are renamed through `data.columns` (question, answer). A row without a usable question
or answer is an error naming the file and row: training on silently dropped rows hides bugs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1kit.data import tasks

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataError(ValueError):
    """A dataset is missing, malformed, or lacks a column; the message says where."""


def load_rows(data_cfg, split: str, size: int | None = None) -> list[dict]:
    """Rows of one split, renamed to question/answer; `size` caps the count (procedural: generates that many)."""
    source = data_cfg.source
    if source == "tiny_arith":
        task = data_cfg.task
        n = size if size is not None else data_cfg.train_size
        return tasks.arith_split(split, n, seed=task.seed, num_operands=task.num_operands, max_operand=task.max_operand)
    if source.endswith(FILE_SUFFIXES) or os.path.exists(source):
        raw, origin = _read_file(Path(source)), source
    elif source.count("/") == 1 and not source.startswith((".", "/")):
        raw, origin = _read_hub(source, data_cfg.subset, split), f"{source}[{split}]"
    else:
        raise DataError(f"data.source {source!r} is neither tiny_arith, an existing .jsonl/.parquet/.csv file, "
                        "nor a hub dataset name like 'openai/gsm8k'")
    rows = _normalise(raw, data_cfg.columns, origin)
    return rows[:size] if size is not None else rows


def _read_file(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise DataError(f"dataset file {str(path)!r}: expected .jsonl, .parquet or .csv")


def _read_hub(name: str, subset: str | None, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(name, subset, split=split))
    except Exception as e:  # offline, unknown name, unknown split: say which
        raise DataError(f"could not load hub dataset {name!r} (subset {subset!r}) split {split!r}: {e}") from e


def _normalise(raw: list[dict], columns, origin: str) -> list[dict]:
    if not raw:
        raise DataError(f"dataset {origin} is empty")
    rows = []
    for i, row in enumerate(raw):
        for role, column in (("question", columns.question), ("answer", columns.answer)):
            value = row.get(column)
            if value is None or str(value).strip() == "":
                present = sorted(row)
                raise DataError(f"{origin} row {i}: missing {role} column {column!r} (columns present: {present}); "
                                f"set data.columns.{role} to the right column")
        rows.append({**row, "question": str(row[columns.question]), "answer": str(row[columns.answer])})
    return rows
