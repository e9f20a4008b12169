"""The benchmarks shipped inside r1kit: GSM8K, MATH-500, AIME 2024, AIME 2025, AMC 2023.

The data files live in ``r1kit/assets/benchmarks/<name>/`` next to their original LICENSE and a
README with the source repository, commit and checksums, so ``data.source: gsm8k`` and
``r1kit eval --benchmark aime24`` work offline. Each benchmark says which columns hold the
question, the gold answer and (where there is one) a worked solution, and how answers compare:

  numeric   GSM8K, AIME, AMC: numbers (``"025"`` == 25, ``1,080`` == 1080, ``27.0`` == 27)
  math      MATH-500: LaTeX answers, compared with math-verify after a fast numeric/string check

The sets disagree on answer types (GSM8K's ``#### N`` solutions, AIME24's zero-padded strings,
AIME25's ints, AMC's floats, MATH's LaTeX); ``gold_of`` turns each into one answer string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1kit.data.answers import extract_hash_answer, parse_number

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "assets" / "benchmarks"
AIME25_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Benchmark:
    name: str
    splits: tuple[str, ...]  # files <split>.jsonl in the benchmark's folder
    question: str  # column with the problem text
    answer: str  # column with the gold answer (GSM8K: the solution ending in "#### N")
    checker: str  # "numeric" or "math": how a predicted answer is compared with the gold one
    solution: str | None = None  # column with a worked solution, when the set has one
    strip_suffix: str | None = None  # text every question ends with and that r1kit's templates add themselves
    about: str = ""

    def path(self, split: str) -> Path:
        return BENCHMARK_DIR / self.name / f"{split}.jsonl"


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", ("train", "test"), "question", "answer", "numeric", solution="answer",
              about="grade-school math word problems (7,473 train / 1,319 test), OpenAI, MIT"),
    Benchmark("math500", ("test",), "problem", "answer", "math", solution="solution",
              about="500 MATH test problems from 'Let's Verify Step by Step', OpenAI, MIT"),
    Benchmark("aime24", ("test",), "problem", "answer", "numeric", solution="solution",
              about="AIME 2024 I and II (30 problems), answers 0-999"),
    Benchmark("aime25", ("test",), "prompt", "answer", "numeric", strip_suffix=AIME25_INSTRUCTION,
              about="AIME 2025 I and II (30 problems), answers 0-999"),
    Benchmark("amc23", ("test",), "problem", "answer", "numeric",
              about="AMC 12 2023 (40 problems rewritten with numeric answers)"),
)}


MULTIPLE_CHOICE = "multiple_choice"  # the source of lettered rows (r1kit.data.choices), and their checker's name


def checker_for(source: str, checker: str) -> str:
    """The answer checker for data from `source`: eval.checker when set, else ("auto") a shipped
    benchmark's own checker, or multiple_choice for lettered rows. Training-time eval and `r1kit eval`
    both decide here."""
    if checker == "auto" and source == MULTIPLE_CHOICE:
        return MULTIPLE_CHOICE
    bench = BENCHMARKS.get(source)
    return bench.checker if bench is not None and checker == "auto" else checker


def extract_for(checker: str, extract: str) -> str:
    """The extract mode: `extract` as set, except that ``auto`` under the multiple_choice checker reads
    the option letter (``choice``: "The answer is (B)" too, which the math extractors never read)."""
    return "choice" if checker == MULTIPLE_CHOICE and extract == "auto" else extract


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; shipped: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_file(name: str, split: str) -> Path:
    """The shipped file of one split; a split the benchmark lacks is an error listing the ones it has."""
    bench = get_benchmark(name)
    if split not in bench.splits:
        raise KeyError(f"benchmark {name!r} has no split {split!r}; it has: {', '.join(bench.splits)}")
    path = bench.path(split)
    if not path.is_file():
        raise FileNotFoundError(f"the shipped copy of {name} is missing at {path}; reinstall r1kit")
    return path


def gold_of(bench: Benchmark, raw) -> str | None:
    """One gold answer string from a raw answer cell, or None when it is not usable.

    GSM8K: the value after ``####`` (commas removed). Numeric sets: a value that parses as a number,
    written without a needless ``.0`` (AMC's ``27.0`` -> ``"27"``). MATH: the LaTeX string as is.
    """
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = str(raw).strip()
    if bench.name == "gsm8k":
        text = extract_hash_answer(text) or ""
    if not text:
        return None
    if bench.checker == "numeric" and parse_number(text) is None:
        return None
    return text


def question_of(bench: Benchmark, raw) -> str | None:
    """The question text, with a suffix r1kit adds itself (AIME25's boxed instruction) removed."""
    if raw is None or not str(raw).strip():
        return None
    text = str(raw)
    if bench.strip_suffix and text.endswith(bench.strip_suffix):
        text = text[: -len(bench.strip_suffix)]
    return text
