"""Answer extraction and checking: pull the final answer out of a completion, compare it to gold.

Two halves:
  - extraction (``extract_*``): text -> answer string or None. Each extractor looks for one
    convention (``<answer>`` tag, ``\\boxed{}``, GSM8K ``####``, last number); ``extract_answer``
    chains them by mode. When a convention appears several times the LAST one wins, because
    models restate and correct themselves and the final statement is the committed answer.
  - checking: ``parse_number`` / ``numbers_match`` for plain numbers (fast, exact rules), then
    ``answers_match`` which falls back to string equality and finally math-verify for LaTeX.

No torch here, and math-verify (which pulls in sympy) is imported only when a comparison needs it,
so importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Callable

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
    matches = _NUMBER_RE.findall(text or "")
    return matches[-1].replace(",", "") if matches else None


def _tag_answer(text: str) -> str | None:
    """The ``<answer>`` content; a ``\\boxed{}`` inside it is unwrapped so numbers compare fast."""
    content = extract_tag(text, "answer")
    if content is None:
        return None
    boxed = extract_boxed(content)
    return boxed if boxed is not None else content


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
}
EXTRACT_MODES: tuple[str, ...] = tuple(_EXTRACTORS)


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """Extract the final answer from a completion according to ``mode``.

    Modes: ``"tag"`` (``<answer>`` only), ``"boxed"``, ``"hash"``, ``"last_number"``,
    ``"auto"`` (answer tag, else boxed, else ``####``) and ``"auto_last_number"`` (auto, then the
    last number). In the tag modes a ``\\boxed{}`` inside ``<answer>`` is unwrapped.
    Raises ValueError on an unknown mode.
    """
    extractors = _EXTRACTORS.get(mode)
    if extractors is None:
        raise ValueError(f"unknown extract mode {mode!r}; expected one of {list(EXTRACT_MODES)}")
    for extractor in extractors:
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------

_PLAIN_RE = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_NUM = r"\s*([+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*"  # one fraction part, commas already resolved
_LATEX_FRAC_RE = re.compile(rf"([+-]?)\\[dt]?frac\{{{_NUM}\}}\{{{_NUM}\}}")
_SLASH_FRAC_RE = re.compile(rf"{_NUM}/{_NUM}")


def _clean_number_text(s: str) -> str:
    """Drop currency/percent signs and LaTeX spacing so only the number's own characters stay."""
    t = s.strip()
    for junk in ("\\$", "$", "\\%", "%", "\\!", "\\,"):
        t = t.replace(junk, "")
    t = t.replace("{,}", ",")  # LaTeX thousands separator: 1{,}080
    t = t.strip()
    if t.endswith("."):
        t = t[:-1].rstrip()  # sentence-final period: "42."
    return t


def _plain_to_float(t: str) -> float | None:
    """Float for a plain decimal (commas only as correct thousands groups), else None."""
    if not _PLAIN_RE.fullmatch(t):
        return None
    return float(t.replace(",", ""))


def _fraction_to_float(num: str, den: str, sign: str = "") -> float | None:
    """``sign * num / den``, None on a zero denominator."""
    d = float(den)
    if d == 0:
        return None
    value = float(num) / d
    return -value if sign == "-" else value


def parse_number(s: str) -> float | None:
    """Normalise a numeric answer string to a float, or None when it is not a plain number.

    Accepts surrounding whitespace, ``$``, ``%``, a trailing ``.``, thousands commas only in
    correct groups (``"1,080"`` -> 1080.0, but ``"1,08"`` -> None, since a comma there is more
    likely a list or a decimal comma), leading zeros (``"025"`` -> 25.0), signs, and simple
    fractions ``3/4``, ``-3/4``, ``\\frac{3}{4}``, ``-\\dfrac{3}{4}``. Anything with units,
    variables or other LaTeX returns None; ``answers_match`` hands those to math-verify.
    """
    if s is None:
        return None
    t = _clean_number_text(str(s))
    if not t:
        return None
    plain = _plain_to_float(t)
    if plain is not None:
        return plain
    if (m := _LATEX_FRAC_RE.fullmatch(t)) is not None:
        return _fraction_to_float(m.group(2), m.group(3), m.group(1))
    if (m := _SLASH_FRAC_RE.fullmatch(t)) is not None:
        return _fraction_to_float(m.group(1), m.group(2))
    return None


def numbers_match(pred: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when both parse as numbers (``parse_number``) and agree within ``rel_tol``.

    A relative tolerance only, so 0 matches only 0: small answers are not waved through.
    """
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return False
    return math.isclose(p, g, rel_tol=rel_tol)


def _normalise_ws(s: str) -> str:
    """Collapse whitespace runs to one space and strip."""
    return " ".join(s.split())


def _as_latex(s: str) -> str:
    """Wrap in ``$...$`` unless already delimited, so math-verify parses bare LaTeX."""
    t = s.strip()
    if t.startswith(("$", "\\(", "\\[")):
        return t
    return f"${t}$"


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence; any error or timeout counts as not equal.

    math-verify's timeouts use ``signal.alarm``, which only works in the main thread; elsewhere
    (a reward thread pool) we run without its timeout rather than have every call fail.
    """
    try:
        import math_verify
        from math_verify.errors import TimeoutException
    except ImportError:  # pragma: no cover - math-verify is a dependency, but fail closed
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = math_verify.parse(_as_latex(gold), parsing_timeout=timeout)
        pred_parsed = math_verify.parse(_as_latex(pred), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


def answers_match(pred: str, gold: str) -> bool:
    """True when ``pred`` is the same answer as ``gold``. Never raises.

    In order: numeric equality (``numbers_match``); exact string equality after whitespace
    normalisation; math-verify equivalence (``\\frac{\\pi}{2}`` == ``\\pi/2``). When both sides
    are plain numbers the numeric verdict is final: math-verify would only repeat it more
    slowly, and its 6-digit float rounding is looser than ``numbers_match``.
    Pass extracted answers, not whole completions: math-verify finds nothing in
    ``"<answer>26</answer>"``.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if not pred.strip() or not gold.strip():
        return False
    if numbers_match(pred, gold):
        return True
    if parse_number(pred) is not None and parse_number(gold) is not None:
        return False
    if _normalise_ws(pred) == _normalise_ws(gold):
        return True
    return _math_verify_equal(pred, gold)


def _numeric_match(pred: str, gold: str) -> bool:
    return numbers_match(pred, gold)


# How a benchmark compares answers: "numeric" (GSM8K, AIME, AMC) accepts only numbers that agree,
# "math" (MATH-500) is the full answers_match chain with math-verify, "auto" is the same chain.
CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "auto": answers_match,
    "math": answers_match,
    "numeric": _numeric_match,
}


def check_answer(pred: str | None, gold: str | None, checker: str = "auto") -> bool:
    """True when the extracted ``pred`` is the ``gold`` answer under ``checker`` (see CHECKERS)."""
    if checker not in CHECKERS:
        raise ValueError(f"unknown answer checker {checker!r}; expected one of {list(CHECKERS)}")
    if pred is None or gold is None:
        return False
    return CHECKERS[checker](str(pred), str(gold))
