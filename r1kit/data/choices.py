"""Multiple-choice questions (GPQA and the like) as r1kit rows: a lettered prompt and a gold letter.

Two layouts of a source row are read:
  GPQA      ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``: Idavidrein/gpqa on the hub
            (gated: accept its terms on the hub and log in; r1kit ships none of it), or a local file
            with those columns. GPQA lists the correct answer first, so its options are always shuffled.
  generic   ``question``, ``choices`` (a list of 2 to 26 strings), ``answer`` (a letter, or a 0-based
            index as in MMLU): kept in the file's order, since its letters may mean something
            ("all of the above"), unless shuffling is asked for.

A row's shuffle is seeded by (seed, question text) alone, so its option order is the same on every
run, with any ``--limit``, in any process. Each row becomes ``{"question": <question, lettered options
and the answer-format line>, "answer": "B", "choices": [...]}``, scored with the ``choice`` extract
mode and the ``multiple_choice`` checker (r1kit.data.answers).
"""

from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path

from r1kit.data.answers import choice_letter
from r1kit.data.sources import DataError, DataReport, _check_not_empty, _read_file, _read_hub, _reject

GPQA_HUB = "Idavidrein/gpqa"
GPQA_BENCHMARKS = ("gpqa_diamond", "gpqa_main", "gpqa_extended")  # `--benchmark` names = the hub configs
GPQA_SPLIT = "train"  # GPQA publishes each config as one "train" split
GPQA_QUESTION, GPQA_CORRECT = "Question", "Correct Answer"
GPQA_INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
LETTERS = string.ascii_uppercase


def shuffle_choices(choices: list[str], correct: int, seed: int, key: str) -> tuple[list[str], int]:
    """(choices in a seeded order, the new index of the correct one); the order depends on (seed, key) only.

    >>> choices, correct = shuffle_choices(["right", "w1", "w2", "w3"], 0, seed=0, key="q")
    >>> choices[correct], sorted(choices)
    ('right', ['right', 'w1', 'w2', 'w3'])
    """
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()  # not hash(): Python salts str hashes per process
    order = list(range(len(choices)))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return [choices[i] for i in order], order.index(correct)


def format_question(question: str, choices: list[str]) -> str:
    """The question, its options as ``A) ...`` lines, and a line saying how to answer.

    >>> print(format_question("2+2?", ["3", "4"]))
    2+2?
    <BLANKLINE>
    A) 3
    B) 4
    <BLANKLINE>
    Answer with the letter of the correct option (A or B).
    """
    letters = LETTERS[:len(choices)]
    options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(letters, choices))
    named = f"{', '.join(letters[:-1])} or {letters[-1]}"
    return f"{question.strip()}\n\n{options}\n\nAnswer with the letter of the correct option ({named})."


def _text(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or not str(value).strip():
        raise ValueError(f"missing or empty {column!r}")
    return str(value).strip()


def gpqa_choices(row: dict) -> tuple[str, list[str], int]:
    """(question, [correct, incorrect 1..3], 0) of a GPQA row; ValueError names an empty column."""
    return _text(row, GPQA_QUESTION), [_text(row, c) for c in (GPQA_CORRECT, *GPQA_INCORRECT)], 0


def generic_choices(row: dict) -> tuple[str, list[str], int]:
    """(question, choices, index of the correct one) of a ``question/choices/answer`` row."""
    choices = row.get("choices")
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"'choices' must be a list of 2 to {len(LETTERS)} options, got {choices!r}")
    options = [str(c).strip() for c in choices]
    if not all(options):
        raise ValueError("'choices' holds an empty option")
    answer = row.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        correct = answer  # MMLU style: a 0-based index
    else:
        letter = choice_letter(answer) if isinstance(answer, str) else None
        correct = LETTERS.index(letter) if letter else -1
    if not 0 <= correct < len(options):
        raise ValueError(f"'answer' must be a letter A-{LETTERS[len(options) - 1]} or an index 0-{len(options) - 1} "
                         f"of the {len(options)} choices, got {answer!r}")
    return _text(row, "question"), options, correct


def layout_of(raw: list[dict]) -> str | None:
    """"gpqa" or "generic" when the rows' columns are a multiple-choice layout, else None."""
    columns = set().union(*(row.keys() for row in raw)) if raw else set()
    if {GPQA_QUESTION, GPQA_CORRECT, *GPQA_INCORRECT} <= columns:
        return "gpqa"
    if {"question", "choices", "answer"} <= columns:
        return "generic"
    return None


def choice_rows(raw: list[dict], origin: str, shuffle: bool | None = None, seed: int = 0,
                skip_invalid: bool = False) -> tuple[list[dict], DataReport]:
    """Lettered rows of GPQA or generic multiple-choice data (module docstring); ``shuffle=None``:
    GPQA shuffled, generic rows in their own order. A bad row is an error naming it (or skipped and
    counted with ``skip_invalid``)."""
    layout = layout_of(raw)
    if layout is None:
        raise DataError(f"{origin}: not multiple-choice data; expected the columns {GPQA_QUESTION!r}, "
                        f"{GPQA_CORRECT!r}, {', '.join(map(repr, GPQA_INCORRECT))} (GPQA) or 'question', "
                        "'choices', 'answer'")
    convert = gpqa_choices if layout == "gpqa" else generic_choices
    shuffle = layout == "gpqa" if shuffle is None else shuffle
    report, rows = DataReport(origin, read=len(raw)), []
    for i, row in enumerate(raw):
        try:
            question, choices, correct = convert(row)
        except ValueError as e:
            _reject(report, str(e).partition(", got")[0], i, f"{origin} row {i}: {e}", skip_invalid)
            continue
        if shuffle:
            choices, correct = shuffle_choices(choices, correct, seed, question)
        rows.append({"question": format_question(question, choices), "answer": LETTERS[correct],
                     "choices": choices, "source_question": question})
    report.kept = len(rows)
    _check_not_empty(rows, report)
    return rows, report


def load_gpqa(name: str, shuffle_seed: int = 0) -> tuple[list[dict], DataReport]:
    """A GPQA config from the hub (needs internet, and access to the gated dataset)."""
    if name not in GPQA_BENCHMARKS:
        raise DataError(f"unknown GPQA set {name!r}; expected one of {', '.join(GPQA_BENCHMARKS)}")
    try:
        raw = _read_hub(GPQA_HUB, name, GPQA_SPLIT)
    except DataError as e:
        raise DataError(f"{e}. GPQA is gated: accept its terms on https://huggingface.co/datasets/{GPQA_HUB}, log in "
                        "(`hf auth login` or HF_TOKEN), or evaluate a local copy with --benchmark FILE") from e
    return choice_rows(raw, f"{GPQA_HUB}[{name}/{GPQA_SPLIT}]", seed=shuffle_seed)


def load_choice_file(path: str | Path, shuffle: bool | None = None,
                     shuffle_seed: int = 0) -> tuple[list[dict], DataReport] | None:
    """Lettered rows of a local multiple-choice file, or None when its columns are no such layout."""
    raw = _read_file(Path(path))
    if layout_of(raw) is None:
        return None
    return choice_rows(raw, str(path), shuffle, shuffle_seed)
