"""Numbers as answers are written: exact parsing (``1,080``, ``-3/4``, ``\\frac{3}{4}``, ``$5``) and equality.

The lowest layer of answer checking: r1kit.data.answer_types (lists, sets) and r1kit.data.answers
(extraction, the math and choice checkers) both compare numbers through here. No torch, no sympy.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_PLAIN_RE = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_NUM = r"\s*([+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*"  # one fraction part, commas already resolved
_LATEX_FRAC_RE = re.compile(rf"([+-]?)\\[dt]?frac\{{{_NUM}\}}\{{{_NUM}\}}")
_SLASH_FRAC_RE = re.compile(rf"{_NUM}/{_NUM}")
MAX_NUMBER_CHARS = 1000
MINUS_SIGNS = ("\u2212", "\u2013", "\ufe63", "\uff0d")  # minus sign, en dash, small and full-width hyphen-minus


def _clean_number_text(s: str) -> str:
    """Drop currency/percent signs and LaTeX spacing so only the number's own characters stay."""
    t = s.strip()
    for minus in MINUS_SIGNS:
        t = t.replace(minus, "-")
    for junk in ("\\$", "$", "\\%", "%", "\\!", "\\,"):
        t = t.replace(junk, "")
    t = t.replace("{,}", ",")  # LaTeX thousands separator: 1{,}080
    t = t.strip()
    if t.endswith("."):
        t = t[:-1].rstrip()  # sentence-final period: "42."
    return t


def _fraction(num: str, den: str, sign: str = "") -> Fraction | None:
    """``sign * num / den`` exactly, None on a zero denominator."""
    d = Fraction(den)
    if d == 0:
        return None
    value = Fraction(num) / d
    return -value if sign == "-" else value


def parse_exact(s: str) -> Fraction | None:
    """The exact value of a plain numeric answer, or None when it is not a plain number.

    Accepts surrounding whitespace, ``$``, ``%``, a trailing ``.``, thousands commas only in
    correct groups (``"1,080"`` -> 1080, but ``"1,08"`` -> None, since a comma there is more
    likely a list or a decimal comma), leading zeros (``"025"`` -> 25), signs (the unicode minus
    too), and simple fractions ``3/4``, ``-3/4``, ``\\frac{3}{4}``, ``-\\dfrac{3}{4}``. Anything
    with units, variables, operators or other LaTeX returns None: ``17+11`` is not a number; so
    does a "number" over MAX_NUMBER_CHARS characters (Python refuses to parse one of 4,300 digits).
    """
    if s is None:
        return None
    t = _clean_number_text(str(s))
    if not t or len(t) > MAX_NUMBER_CHARS:
        return None
    if _PLAIN_RE.fullmatch(t):
        return Fraction(t.replace(",", ""))
    if (m := _LATEX_FRAC_RE.fullmatch(t)) is not None:
        return _fraction(m.group(2), m.group(3), m.group(1))
    if (m := _SLASH_FRAC_RE.fullmatch(t)) is not None:
        return _fraction(m.group(1), m.group(2))
    return None


def parse_number(s: str) -> float | None:
    """``parse_exact`` as a float (see there for what counts as a number), or None."""
    exact = parse_exact(s)
    return None if exact is None else float(exact)


def _terminates(x: Fraction) -> bool:
    """True when x has a finite decimal expansion (its reduced denominator is 2^a 5^b)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def numbers_match(pred: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when both parse as numbers (``parse_exact``) with the same value.

    The comparison is exact: integers and decimals must be equal (1,000,001 is not 1,000,000;
    ``27.0`` is 27; ``0.5`` is ``1/2``). The one tolerance: when exactly one side is a fraction
    with no finite decimal expansion (``1/3``) and the other a decimal, no decimal can equal it,
    so the decimal counts when it is within ``rel_tol`` (default 1e-6, about seven significant
    digits: ``0.3333333`` is 1/3, ``0.333`` is not).
    """
    p, g = parse_exact(pred), parse_exact(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    if _terminates(p) != _terminates(g):
        return math.isclose(p, g, rel_tol=rel_tol)
    return False
