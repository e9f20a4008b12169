"""Dataset sources: every source yields rows ``{"question": str, "answer": str, ...}``.

Sources by `data.source`:
  tiny_arith                the built-in procedural task (r1kit.data.tasks); splits train / heldout
  gsm8k, math500, aime24, aime25, amc23
                            benchmarks shipped inside r1kit (r1kit.data.benchmarks), offline
  reasoning_gym:<task>      a reasoning-gym task (optional extra), options in `data.task_config`
  path/to/file.jsonl|.parquet|.csv   a local file (the split name is ignored: a file has no held-out
                            split, so evaluation reads `data.eval_source`, or warns that it uses the training rows)
  owner/name                a Hugging Face hub dataset, loaded with `datasets` (needs internet)

Evaluation rows come from `data.eval_source` (a file or benchmark; default: the training source) at
`data.eval_split`, whose default `auto` is the source's held-out split (heldout for procedural
sources, test for benchmarks and hub datasets); see `eval_target`.

Files and hub datasets are renamed through `data.columns` (question, answer); a column that is not
in the data is an error listing the ones that are. A row without a usable question or answer is
an error naming the file and row, unless `data.skip_invalid` is set: then it is skipped and
counted. Every load returns a DataReport (rows read, kept, skipped and why); `load_rows` logs it
when anything was skipped, and `r1kit data SOURCE` prints it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.data import benchmarks, tasks
from r1kit.data.answers import extract_boxed, extract_hash_answer
from r1kit.data.errors import DataError  # noqa: F401  (re-exported: callers import it from here)
from r1kit.data.gym import gym_rows

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
REASONING_GYM = "reasoning_gym:"
log = logging.getLogger("r1kit.data")


@dataclass
class DataReport:
    """What a load did: rows read from the source, rows kept, and rows skipped by reason."""

    origin: str  # file path, benchmark[split] or hub name[split]
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    first_skipped: dict = field(default_factory=dict)  # reason -> index of the first row skipped for it

    def summary(self) -> str:
        text = f"{self.origin}: read {self.read} rows, kept {self.kept}, skipped {sum(self.skipped.values())}"
        reasons = [f"{n} {why} (first: row {self.first_skipped[why]})" for why, n in self.skipped.most_common()]
        return text + (" (" + "; ".join(reasons) + ")" if reasons else "")


def load_rows(data_cfg, split: str, size: int | None = None) -> list[dict]:
    """Rows of one split, renamed to question/answer; `size` caps the count (procedural: generates that many)."""
    rows, report = load_data(data_cfg, split, size)
    if report.skipped:
        log.warning("data %s", report.summary())
    return rows


def heldout_split(source: str) -> str | None:
    """The split a source keeps out of training: heldout (procedural), test (benchmarks, hub), None (a file)."""
    if source == "tiny_arith" or source.startswith(REASONING_GYM):
        return "heldout"
    if _is_file(source):
        return None
    return "test"


def eval_target(data_cfg) -> tuple[str, str, bool]:
    """(source, split, on training rows?) of evaluation: data.eval_source (or data.source) at
    data.eval_split, whose default ``auto`` is that source's held-out split."""
    source = data_cfg.eval_source or data_cfg.source
    split = data_cfg.eval_split if data_cfg.eval_split != "auto" else heldout_split(source) or "all"
    same = source == data_cfg.source and (_is_file(source) or split == data_cfg.split)
    return source, split, same


def _is_eval_request(data_cfg, split: str) -> bool:
    """Callers ask for evaluation rows by passing data.eval_split (``auto`` unless set)."""
    return split == "auto" or (split == data_cfg.eval_split and split != data_cfg.split)


def load_data(data_cfg, split: str, size: int | None = None) -> tuple[list[dict], DataReport]:
    """Rows of one split and the report of how they were read (see the module docstring).

    ``split=data_cfg.eval_split`` asks for evaluation rows (eval_target): from data.eval_source when
    set, else the source's held-out split; when those are the training rows (a local file without
    data.eval_source, or a split equal to data.split) a warning says so.
    """
    source = data_cfg.source
    if _is_eval_request(data_cfg, split):
        source, split, same = eval_target(data_cfg)
        if same:
            log.warning("data: evaluating on the training rows of %s (%s has no held-out split here); set "
                        "data.eval_source to a held-out file or benchmark", source, source)
    if source == "tiny_arith":
        task = data_cfg.task
        n = size if size is not None else data_cfg.train_size
        rows = tasks.arith_split(split, n, seed=task.seed, num_operands=task.num_operands, max_operand=task.max_operand)
        return rows, DataReport(f"tiny_arith[{split}]", read=len(rows), kept=len(rows))
    if source in benchmarks.BENCHMARKS:
        return _load_benchmark(source, split, size, data_cfg.skip_invalid)
    if source.startswith(REASONING_GYM):
        n = size if size is not None else data_cfg.train_size
        rows = gym_rows(source[len(REASONING_GYM):], split, n, data_cfg.task.seed, data_cfg.task_config)
        return rows, DataReport(f"{source}[{split}]", read=len(rows), kept=len(rows))
    if _is_file(source):
        raw, origin = _read_file(Path(source)), source
    elif source.count("/") == 1 and not source.startswith((".", "/")):
        raw, origin = _read_hub(source, data_cfg.subset, split), f"{source}[{split}]"
    else:
        raise DataError(f"data.source {source!r} is not tiny_arith, a shipped benchmark ({', '.join(benchmarks.BENCHMARKS)}), "
                        "reasoning_gym:<task>, an existing .jsonl/.parquet/.csv file, "
                        "nor a hub dataset name like 'openai/gsm8k'")
    rows, report = _normalise(raw, data_cfg.columns, origin, data_cfg.skip_invalid, data_cfg.gold_extract)
    return (rows[:size] if size is not None else rows), report


def _is_file(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or os.path.exists(source)


def _load_benchmark(name: str, split: str, size: int | None, skip_invalid: bool) -> tuple[list[dict], DataReport]:
    bench = benchmarks.get_benchmark(name)
    try:
        path = benchmarks.benchmark_file(name, split)
    except KeyError as e:
        raise DataError(f"data.source {name!r}: {e.args[0]}") from None
    raw = _read_file(path)
    report = DataReport(f"{name}[{split}] ({path})", read=len(raw))
    rows = []
    for i, row in enumerate(raw):
        question = benchmarks.question_of(bench, row.get(bench.question))
        gold = benchmarks.gold_of(bench, row.get(bench.answer))
        problem = "no question" if question is None else "unusable answer" if gold is None else None
        if problem:
            _reject(report, problem, i, f"{path} row {i}: {problem} ({bench.answer}={row.get(bench.answer)!r})",
                    skip_invalid)
            continue
        extra = {"solution": row[bench.solution]} if bench.solution else {}
        rows.append({**row, **extra, "question": question, "answer": gold})
    report.kept = len(rows)
    _check_not_empty(rows, report)
    return (rows[:size] if size is not None else rows), report


def _reject(report: DataReport, reason: str, index: int, message: str, skip_invalid: bool) -> None:
    """Count a bad row when skipping is asked for; otherwise raise with the row's location."""
    if not skip_invalid:
        raise DataError(message + "; fix the data or set data.skip_invalid=true to skip such rows")
    report.skipped[reason] += 1
    report.first_skipped.setdefault(reason, index)


def _check_not_empty(rows: list[dict], report: DataReport) -> None:
    if not rows:
        raise DataError(f"dataset {report.origin} is empty" if not report.read
                        else f"dataset {report.origin}: every row was skipped ({report.summary()})")


def _read_file(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise DataError(f"dataset file {str(path)!r}: expected a .jsonl, .parquet or .csv file, got {suffix or 'no suffix'!r}")


def _read_jsonl(path: Path) -> list[dict]:
    """JSON Lines (one object a line); a .json file holding one array of objects is read too."""
    text = path.read_text()
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}")
    return rows


def _read_hub(name: str, subset: str | None, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(name, subset, split=split))
    except Exception as e:  # offline, unknown name, unknown split: say which
        raise DataError(f"could not load hub dataset {name!r} (subset {subset!r}) split {split!r}: {e}") from e


def _normalise(raw: list[dict], columns, origin: str, skip_invalid: bool = False,
               gold_extract: str = "none") -> tuple[list[dict], DataReport]:
    report = DataReport(origin, read=len(raw))
    if not raw:
        raise DataError(f"dataset {origin} is empty")
    present = sorted(set().union(*(row.keys() for row in raw)))
    for role, column in (("question", columns.question), ("answer", columns.answer)):
        if column not in present:
            raise DataError(f"{origin}: unknown {role} column {column!r}; columns present: {present}; "
                            f"set data.columns.{role} to one of them")
    rows = []
    for i, row in enumerate(raw):
        bad = [role for role, column in (("question", columns.question), ("answer", columns.answer))
               if row.get(column) is None or str(row[column]).strip() == ""]
        if not bad and "####" in str(row[columns.answer]) and extract_hash_answer(str(row[columns.answer])) is None:
            bad = ["answer"]  # a GSM8K-style solution whose "#### N" line is empty
        if bad:
            reason = f"missing or empty {bad[0]}"
            _reject(report, reason, i, f"{origin} row {i}: {reason} (column {getattr(columns, bad[0])!r})", skip_invalid)
            continue
        gold = str(row[columns.answer])
        if gold_extract == "boxed":
            gold = (extract_boxed(gold) or "").strip()
            if not gold:  # a worked solution without a final \boxed{} has no gold to check
                reason = "no \\boxed{} answer"
                _reject(report, reason, i, f"{origin} row {i}: {reason} in column {columns.answer!r} "
                        "(data.gold_extract=boxed)", skip_invalid)
                continue
        rows.append({**row, "question": str(row[columns.question]), "answer": gold})
    report.kept = len(rows)
    _check_not_empty(rows, report)
    return rows, report
