"""Answer extraction and checking: pull the final answer out of a completion, compare it to gold.

Two halves:
  - extraction (``extract_*``): text -> answer string or None. Each extractor looks for one
    convention (``<answer>`` tag, ``\\boxed{}``, GSM8K ``####``, last number); ``extract_answer``
    chains them by mode. When a convention appears several times the LAST one wins, because
    models restate and correct themselves and the final statement is the committed answer.
  - checking, by answer type (``CHECKERS``; the data source picks one, r1kit.data.benchmarks.checker_for):
    numbers exactly (r1kit.data.numerals: 1,000,001 is not 1,000,000), mathematics through
    ``answers_match`` (numbers, string equality, then math-verify for LaTeX), option letters, and
    text, ordered lists, unordered sets and booleans (r1kit.data.answer_types), which never reach
    math-verify. ``judge_answer`` returns None when the gold is not an answer of the checker's type;
    none of the checkers evaluates the policy's arithmetic for a numeric gold (``math_match``).
  - multiple choice: ``extract_choice`` finds the option letter a completion commits to
    (``<answer>B</answer>``, ``\\boxed{B}``, "The answer is (B)", "Answer: B"); the
    ``multiple_choice`` checker compares letters (r1kit.data.choices builds the lettered questions).

No torch here, and math-verify (which pulls in sympy) is imported only when a comparison needs it,
so importing this module stays cheap.
"""

from __future__ import annotations

import re
from typing import Callable, Literal

from r1kit.data.answer_types import TYPED_CHECKERS, infer_answer_type, is_words, text_match
from r1kit.data.latex import latex_equal
from r1kit.data.numerals import (  # noqa: F401  (MAX_NUMBER_CHARS, parse_number: re-exported for callers)
    MAX_NUMBER_CHARS,
    MINUS_SIGNS,
    numbers_match,
    parse_exact,
    parse_number,
)

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")

# A number as people write it: optional sign, digits with optional thousands commas, optional
# decimals, optional "/denominator". The sign counts only when it is not a binary minus ("3-5"),
# i.e. when no word character, digit or closing bracket precedes it.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])-)?"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
    r"(?:/\d+(?:\.\d+)?)?"
)


def extract_hash_answer(text: str) -> str | None:
    """Return the value after the last ``####`` (GSM8K convention), commas removed, stripped.

    Only the rest of that line is taken, so trailing chatter on later lines is ignored.
    Example: ``"... so 1,080 in all.\\n#### 1,080"`` -> ``"1080"``. None when absent or empty.
    """
    matches = _HASH_RE.findall(text or "")
    if not matches:
        return None
    value = matches[-1].replace(",", "").strip()
    return value or None


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or None if unbalanced.

    Escaped braces (``\\{``, ``\\}``, as in LaTeX sets) are literal characters, not grouping.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept.

    ``"\\boxed{1} then \\boxed{\\frac{1}{2}}"`` -> ``"\\frac{1}{2}"``. A box inside another box
    belongs to the outer one (``\\boxed{\\boxed{3}}`` -> ``"\\boxed{3}"``). None when there is no
    box or the last box is never closed: a truncated final answer is not an answer.
    """
    text = text or ""
    content: str | None = None
    pos = 0
    while (m := _BOX_OPEN_RE.search(text, pos)) is not None:
        close = _matching_brace(text, m.end() - 1)
        if close is None:
            return None
        content = text[m.end() : close].strip()
        pos = close + 1  # continue after this box: inner boxes are part of its content
    return content


def extract_tag(text: str, tag: str = "answer") -> str | None:
    """Stripped content of the last complete ``<tag>...</tag>`` pair, or None.

    The pair is the last closing tag and the nearest opening tag before it, so with repeated or
    nested tags the innermost final answer wins: ``"<answer>1<answer>2</answer>"`` -> ``"2"``.
    An opening tag with no closing tag after it (a truncated completion) is ignored.
    """
    text = text or ""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    opening = f"<{tag}>"
    start = text.rfind(opening, 0, close)
    if start < 0:
        return None
    return text[start + len(opening) : close].strip()


def extract_last_number(text: str) -> str | None:
    """The last number in the text, commas removed: handles ``-3``, ``1,080``, ``2.5``, ``1/2``.

    A minus after a digit or word is read as subtraction, so ``"3-5"`` -> ``"5"``.
    """
    for minus in MINUS_SIGNS:
        text = (text or "").replace(minus, "-")
    matches = _NUMBER_RE.findall(text or "")
    return matches[-1].replace(",", "") if matches else None


def _last_tag_open(text: str, tag: str = "answer") -> bool:
    """True when the last ``<tag>`` has no ``</tag>`` after it (a completion cut off mid-answer)."""
    return text.rfind(f"<{tag}>") > text.rfind(f"</{tag}>")


def _tag_answer(text: str) -> str | None:
    """The ``<answer>`` content; a ``\\boxed{}`` inside it is unwrapped so numbers compare fast."""
    content = extract_tag(text, "answer")
    if content is None:
        return None
    boxed = extract_boxed(content)
    return boxed if boxed is not None else content


# Multiple choice. A letter on its own: "B", "(b)", "B.", "B)", and with the option's text after
# a bracket or period ("B) 42", "(B) 42", "B. 42"); "A bird" is not the letter A.
_LONE_LETTER_RE = re.compile(r"\(?([A-Za-z])\)?[.):]?")
_LETTER_THEN_TEXT_RE = re.compile(r"(?:\(([A-Za-z])\)|([A-Za-z])[.)])\s.*", re.DOTALL)
# "The answer is (B)", "Answer: B", "**Answer:** B", "final answer is: C": uppercase, or any case in brackets,
# and not the first letter of a word ("Answer: Because" names no option).
_ANSWER_IS_RE = re.compile(r"(?i:answer)(?:\s+is)?[\s:*_]*(?:\(([A-Za-z])\)|([A-Z]))(?![A-Za-z0-9])")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def choice_letter(text: str | None) -> str | None:
    """The option letter (uppercase) a short answer names, or None.

    ``"B"``, ``"(b)"``, ``"B) 42"``, ``"$\\text{B}$"``, ``"\\boxed{B}"``, ``"**B**"`` -> ``"B"``; a sentence
    is searched for "answer is (B)" / "Answer: B" (the last one wins); ``"A bird"`` -> None.
    """
    if text is None:
        return None
    boxed = extract_boxed(str(text))  # "<answer>\\boxed{B}</answer>": the box's content
    t = _LATEX_TEXT_RE.sub(r"\1", str(text) if boxed is None else boxed).replace("$", "").replace("*", "").strip()
    if (m := _LONE_LETTER_RE.fullmatch(t)) is not None:
        return m.group(1).upper()
    if (m := _LETTER_THEN_TEXT_RE.fullmatch(t)) is not None:
        return (m.group(1) or m.group(2)).upper()
    return _last_answer_is(t)


def _last_answer_is(text: str) -> str | None:
    """The letter of the last "answer is (B)" / "Answer: B" in the text, uppercase, or None."""
    matches = _ANSWER_IS_RE.findall(text)
    return (matches[-1][0] or matches[-1][1]).upper() if matches else None


def extract_choice(text: str) -> str | None:
    """The option letter a completion commits to, or None (the ``choice`` extract mode).

    In order: the last complete ``<answer>`` tag (a cut-off final tag yields None, as in the tag
    modes), the last ``\\boxed{}``, the last "answer is (B)" / "Answer: B", and a completion that
    is a letter alone. Each must name a letter by ``choice_letter``'s rules.

    >>> [extract_choice(t) for t in ("<answer>B</answer>", r"so \\boxed{C}", "The answer is (d).", "Answer: A")]
    ['B', 'C', 'D', 'A']
    """
    text = text or ""
    if _last_tag_open(text):
        return None
    for content in (extract_tag(text, "answer"), extract_boxed(text)):
        if content is not None:
            return choice_letter(content)
    stated = _last_answer_is(text)
    if stated is not None:
        return stated
    lone = _LONE_LETTER_RE.fullmatch(text.strip())
    return lone.group(1).upper() if lone else None


# Each mode is the ordered list of extractors to try; the first non-None result wins.
# "auto" never falls back to the last number: on a model that ignores the format, grabbing any
# number rewards lucky guesses and hides format failures. Ask for it with "auto_last_number".
_EXTRACTORS: dict[str, tuple[Callable[[str], str | None], ...]] = {
    "tag": (_tag_answer,),
    "boxed": (extract_boxed,),
    "hash": (extract_hash_answer,),
    "last_number": (extract_last_number,),
    "auto": (_tag_answer, extract_boxed, extract_hash_answer),
    "auto_last_number": (_tag_answer, extract_boxed, extract_hash_answer, extract_last_number),
    "choice": (extract_choice,),
}
EXTRACT_MODES: tuple[str, ...] = tuple(_EXTRACTORS)
# = EXTRACT_MODES (tested)
ExtractMode = Literal["tag", "boxed", "hash", "last_number", "auto", "auto_last_number", "choice"]


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """Extract the final answer from a completion according to ``mode``.

    Modes: ``"tag"`` (``<answer>`` only), ``"boxed"``, ``"hash"``, ``"last_number"``,
    ``"auto"`` (answer tag, else boxed, else ``####``), ``"auto_last_number"`` (auto, then the
    last number) and ``"choice"`` (a multiple-choice letter: ``extract_choice``). In the tag
    modes a ``\\boxed{}`` inside ``<answer>`` is unwrapped, and a final ``<answer>`` that is never
    closed (the completion was cut off) yields None: an earlier answer the model went on to revise
    is not credited, nor is a box or number outside the tags.
    Raises ValueError on an unknown mode.
    """
    extractors = _EXTRACTORS.get(mode)
    if extractors is None:
        raise ValueError(f"unknown extract mode {mode!r}; expected one of {list(EXTRACT_MODES)}")
    if _tag_answer in extractors and _last_tag_open(text or ""):
        return None  # the final <answer> was cut off: an earlier one is not the committed answer
    for extractor in extractors:
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------

def _normalise_ws(s: str) -> str:
    """Collapse whitespace runs to one space and strip."""
    return " ".join(s.split())


_ASSIGNED_RE = re.compile(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*=(?P<value>[^=]*)")  # "x = 5", "a_1 = 3"


def answers_match(pred: str, gold: str) -> bool:
    """True when ``pred`` is the same answer as ``gold`` up to symbolic equivalence. Never raises.

    In order: numeric equality (``numbers_match``); exact string equality after whitespace
    normalisation; math-verify equivalence (``\\frac{\\pi}{2}`` == ``\\pi/2``, ``\\sqrt{4}`` == 2),
    bounded in size and time (r1kit.data.latex). When both sides are plain numbers the numeric
    verdict is final. An equation answers a gold without one only as ``variable = value``
    (``x = 5`` for 5): math-verify would read ``43 = 42`` as 42. Pass extracted answers, not
    whole completions: math-verify finds nothing in ``"<answer>26</answer>"``.
    This evaluates arithmetic (``17+11`` == 28); the checkers (``check_answer``) do not, for
    numeric golds.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if "=" in pred and "=" not in gold:
        assigned = _ASSIGNED_RE.fullmatch(pred)
        if assigned is None:
            return False
        pred = assigned.group("value")
    if not pred.strip() or not gold.strip():
        return False
    if numbers_match(pred, gold):
        return True
    if parse_exact(pred) is not None and parse_exact(gold) is not None:
        return False
    if _normalise_ws(pred) == _normalise_ws(gold):
        return True
    return latex_equal(pred, gold)


def math_match(pred: str, gold: str) -> bool | None:
    """The ``math`` checker: a numeric gold needs a number, a gold of words needs the same words
    (``text_match``), any other gold ``answers_match``.

    When the gold is a plain number (integer, decimal, fraction: every GSM8K, AIME, AMC and tiny
    world gold and most of MATH-500's) the prediction must be a number too (``x = 28`` allowed),
    compared exactly: an unevaluated ``17+11`` or ``\\sqrt{784}`` scores 0, since a policy that
    hands its arithmetic to the checker is reward hacking. A gold of words (MATH-500's
    ``\\text{Evelyn}``) is compared as text, since math-verify reads words as products of symbols
    ("silent" would be "listen"). A symbolic gold (``\\frac{\\sqrt3}{2}``, an interval, a matrix)
    accepts any form math-verify proves equal, unsimplified ones included, as MATH's graders do:
    equivalence cannot be told from simplification left undone. An empty gold: None.
    """
    if not gold.strip():
        return None
    if parse_exact(gold) is not None:
        return numeric_match(pred, gold)
    if is_words(gold):
        return text_match(pred, gold)
    return answers_match(pred, gold)


def numeric_match(pred: str, gold: str) -> bool | None:
    """The ``numeric`` checker: ``pred`` is a number (or ``variable = number``) equal to ``gold``
    (``numbers_match``); an expression is never evaluated. A gold that is no number: None."""
    if parse_exact(gold) is None:
        return None
    assigned = _ASSIGNED_RE.fullmatch(pred)
    return numbers_match(assigned.group("value") if assigned else pred, gold)


def choice_match(pred: str, gold: str) -> bool | None:
    """The ``multiple_choice`` checker: both name the same option letter (``choice_letter``), so
    ``"(b)"`` and ``"B) 42"`` answer gold ``"B"``; an option's text without its letter does not.
    A gold that names no letter: None."""
    gold_letter = choice_letter(gold)
    if gold_letter is None:
        return None
    return choice_letter(pred) == gold_letter


def auto_match(pred: str, gold: str) -> bool | None:
    """The ``auto`` checker: the checker of the gold's type (``infer_answer_type``), for data whose
    source names none. Words, lists of words and booleans never reach math-verify."""
    return CHECKERS[infer_answer_type(gold)](pred, gold)


# How answers compare, by answer type. The data source decides (r1kit.data.benchmarks.checker_for):
# "numeric" (GSM8K, AIME, AMC, tiny_arith) accepts only numbers that agree, "math" (MATH-500) numbers
# for numeric golds, text for word golds and math-verify equivalence for the rest, "multiple_choice"
# (GPQA) option letters; text, ordered_list, unordered_set and boolean are r1kit.data.answer_types';
# "auto" picks one from the gold. Each returns None when the gold is not an answer of its type.
CheckerName = Literal["auto", "math", "numeric", "multiple_choice", "text", "ordered_list", "unordered_set",
                      "boolean"]  # = CHECKERS' keys (tested)
CHECKERS: dict[str, Callable[[str, str], bool | None]] = {
    "auto": auto_match,
    "math": math_match,
    "numeric": numeric_match,
    "multiple_choice": choice_match,
    **TYPED_CHECKERS,
}


def judge_answer(pred: str | None, gold: str | None, checker: str = "auto") -> bool | None:
    """Whether the extracted ``pred`` is the ``gold`` answer under ``checker`` (see CHECKERS): True or
    False, or None when there is no gold or the gold is not an answer of the checker's type (the
    reward does not apply). No extracted answer against a usable gold is False."""
    if checker not in CHECKERS:
        raise ValueError(f"unknown answer checker {checker!r}; expected one of {list(CHECKERS)}")
    if gold is None:
        return None
    verdict = CHECKERS[checker]("" if pred is None else str(pred), str(gold))
    return None if verdict is None else pred is not None and verdict


def check_answer(pred: str | None, gold: str | None, checker: str = "auto") -> bool:
    """True when the extracted ``pred`` is the ``gold`` answer under ``checker`` (``judge_answer``;
    a gold that does not apply counts as not correct)."""
    return judge_answer(pred, gold, checker) is True
