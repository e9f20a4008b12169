"""Answers that are not mathematics: text, ordered lists, unordered sets and booleans, each with its own checker.

math-verify reads any string as an expression, so ``"listen"`` and ``"silent"`` (products of the same six
symbols), ``"b, a"`` and ``"a, b"`` (a set), or ``"Cat"`` and ``"cat"`` (after its normalisation) would all be
"equal". These checkers never go near it:

  text            the same words: whitespace runs, surrounding quotes or ``$``, ``\\text{}`` and one final
                  period aside; case counts ("Paris" is not "paris": tasks that spell, sort or unscramble
                  words are graded on case)
  ordered_list    items separated by ``,`` ``;`` or newlines (an outer ``[...]``/``(...)`` aside), equal one by one
                  in order; an item is a number (``parse_exact``: ``2.0`` is ``2``) or text as above
  unordered_set   the same items in any order, each as often as in the gold
  boolean         true/yes against false/no, any case

Each returns True/False, or None when the gold itself is not an answer of that type (an empty list, a
boolean gold of "maybe"): TRL's ``accuracy_reward`` returns None ("does not apply") when it cannot parse
the gold, and so does r1kit. ``infer_answer_type`` picks a type from the gold alone, for data whose source
does not say (r1kit.data.answers' ``auto`` checker).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

from r1kit.data.numerals import parse_exact

_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
# Words: letters (any script) joined by single spaces, apostrophes, hyphens or periods ("New York", "don't").
_WORDS_RE = re.compile(r"[^\W\d_]+(?:(?:\s+|['\u2019.-])[^\W\d_]+)*")
_SPLIT_RE = re.compile(r"\s*[,;\n]\s*")
_BRACKETS = {"[": "]", "(": ")", "{": "}"}
TRUE_WORDS, FALSE_WORDS = frozenset({"true", "yes"}), frozenset({"false", "no"})


def text_key(s: str) -> str:
    """The text an answer says, for comparison: ``\\text{}`` unwrapped, ``$`` and surrounding quotes
    dropped, one final period removed, whitespace runs collapsed; case kept."""
    t = _WRAPPER_RE.sub(r"\1", str(s)).replace("$", "").strip().strip(_QUOTES).strip()
    t = t[:-1] if t.endswith(".") and not t.endswith("..") else t
    return " ".join(t.strip().strip(_QUOTES).split())


def is_words(s: str) -> bool:
    """Whether an answer is words and nothing else (no digits, operators or LaTeX left after ``text_key``):
    such a gold is text, never mathematics. A single letter is not words (a variable, or an option)."""
    t = text_key(s)
    return len(t) > 1 and _WORDS_RE.fullmatch(t) is not None


def text_match(pred: str, gold: str) -> bool | None:
    """The ``text`` checker: the same text after ``text_key``; None for an empty gold."""
    g = text_key(gold)
    return None if not g else text_key(pred) == g


def list_items(s: str) -> list[str]:
    """The items of a list answer: ``"[a, b; c]"`` -> ``["a", "b", "c"]``. An outer pair of brackets around
    separated items is dropped, items split at ``,`` ``;`` or line breaks, empty items (a trailing comma) dropped."""
    t = str(s).strip()
    if len(t) >= 2 and _BRACKETS.get(t[0]) == t[-1] and (len(t) == 2 or _SPLIT_RE.search(t)):
        t = t[1:-1]  # a bracketed list; "(40)" alone is a bracketed expression, not a list of one
    return [item for item in (i.strip() for i in _SPLIT_RE.split(t)) if item]


def _item_key(item: str) -> tuple[str, Fraction | str]:
    """A list item's identity: its exact value when it is a number, else its text (``text_key``)."""
    value = parse_exact(item)
    return ("number", value) if value is not None else ("text", text_key(item))


def ordered_list_match(pred: str, gold: str) -> bool | None:
    """The ``ordered_list`` checker: the same items in the same order; None for a gold without items."""
    gold_items = list_items(gold)
    if not gold_items:
        return None
    return [_item_key(i) for i in list_items(pred)] == [_item_key(i) for i in gold_items]


def unordered_set_match(pred: str, gold: str) -> bool | None:
    """The ``unordered_set`` checker: the same items, each as many times, in any order."""
    gold_items = list_items(gold)
    if not gold_items:
        return None
    return Counter(map(_item_key, list_items(pred))) == Counter(map(_item_key, gold_items))


def boolean_value(s: str) -> bool | None:
    """True for true/yes, False for false/no (any case, quotes and final period aside), else None."""
    t = text_key(s).lower()
    return True if t in TRUE_WORDS else False if t in FALSE_WORDS else None


def boolean_match(pred: str, gold: str) -> bool | None:
    """The ``boolean`` checker: both say the same truth value; None when the gold says neither."""
    g = boolean_value(gold)
    return None if g is None else boolean_value(pred) is g


TYPED_CHECKERS: dict[str, Callable[[str, str], bool | None]] = {
    "text": text_match,
    "ordered_list": ordered_list_match,
    "unordered_set": unordered_set_match,
    "boolean": boolean_match,
}


def infer_answer_type(gold: str) -> str:
    """The checker for a gold whose source does not name one (the ``auto`` checker):
    ``numeric`` for a number, ``boolean`` for true/false/yes/no, ``ordered_list`` for two or more items
    that are words or numbers, at least one a word (``"threats, didn, 1100"``), ``text`` for words, and
    ``math`` for everything else (LaTeX, expressions, intervals, lists of numbers or of single letters:
    math-verify's ground).

    >>> [infer_answer_type(g) for g in ("1,080", "Yes", "listen, silent", "New York", "\\\\sqrt{2}", "x")]
    ['numeric', 'boolean', 'ordered_list', 'text', 'math', 'math']
    """
    if parse_exact(gold) is not None:
        return "numeric"
    if boolean_value(gold) is not None:
        return "boolean"
    items = list_items(gold)
    if len(items) > 1 and all(_is_token(i) for i in items) and any(_is_word_item(i) for i in items):
        return "ordered_list"
    return "text" if is_words(gold) else "math"


_TOKEN_RE = re.compile(r"[\w'\u2019.-]+(?:\s+[\w'\u2019.-]+)*")  # words, numbers, "_Forum_": no operators or LaTeX


def _is_token(item: str) -> bool:
    return _TOKEN_RE.fullmatch(text_key(item)) is not None


def _is_word_item(item: str) -> bool:
    """An item that is neither a number nor a single character (a variable): a list holding one is words."""
    return len(text_key(item)) > 1 and parse_exact(item) is None
