"""math-verify, bounded: symbolic equivalence of two LaTeX answers that cannot cost seconds or flood the log.

math-verify (sympy underneath) will happily evaluate ``2^{2^{2^{2^{10}}}}`` or a deeply nested
``\\frac`` for as long as it takes, and its own timeout is a whole-second ``signal.alarm`` per
parse and per comparison (up to 3 x 5 s per answer here before this module). A policy can learn to
write such answers, so every call is bounded three ways:

  - size: answers longer than ``MAX_LATEX_CHARS`` or with braces nested deeper than
    ``MAX_NESTING`` are not equal to anything (no MATH-500 gold comes near: longest 53 characters,
    depth 3); exponent towers (``a^{b^{c}}``) are refused, since their value is what takes forever;
  - time: in the main thread one ``setitimer`` deadline of ``DEADLINE_S`` (1 s) covers both
    parses and the comparison (threads cannot take signals, so off the main thread only the size bounds apply);
  - logs: math-verify's warnings (which quote the whole input on a parse timeout) are cut to
    ``LOG_CHARS`` characters, and its "timeout disabled" notice is dropped (the deadline is ours).
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading

MAX_LATEX_CHARS = 400
MAX_NESTING = 12
DEADLINE_S = 1.0
LOG_CHARS = 120
_TOWER_RE = re.compile(r"\^\s*(?:\{[^{}]*\^|\(?[\w.]+\)?\s*\^)")  # a power whose exponent holds a power
_prepared = False


class _Deadline(BaseException):
    """Raised by the interval timer when a comparison runs past its deadline (a BaseException, so
    math-verify's own ``except Exception`` cannot swallow it and run on without a deadline)."""


def _depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


def too_costly(text: str) -> bool:
    """True for answers math-verify is not asked about: too long, too deeply nested, or an exponent tower."""
    return len(text) > MAX_LATEX_CHARS or _depth(text) > MAX_NESTING or _TOWER_RE.search(text) is not None


class _ShortWarnings(logging.Filter):
    """Cut math-verify's records to LOG_CHARS characters; drop its 'timeout is disabled' notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Timeout is disabled" in message:
            return False
        if len(message) > LOG_CHARS:
            record.msg, record.args = message[:LOG_CHARS] + f"... ({len(message)} characters)", None
        return True


def _prepare(math_verify) -> None:
    """Once: filter math-verify's loggers, and compare one pair without a deadline (the first parse and
    comparison build the LaTeX grammar and sympy's caches, ~0.5 s on a busy CPU, which must not count
    against a real answer's deadline)."""
    global _prepared
    if not _prepared:
        for name in ("math_verify.parser", "math_verify.grader", "math_verify.metric", "math_verify.utils"):
            logging.getLogger(name).addFilter(_ShortWarnings())
        gold = math_verify.parse("$\\frac{\\sqrt{3}}{2} + x$", parsing_timeout=None)
        math_verify.verify(gold, math_verify.parse("$x + \\sqrt{3}/2$", parsing_timeout=None), timeout_seconds=None)
        _prepared = True


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise _Deadline after `seconds` of wall time (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _Deadline()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _as_latex(s: str) -> str:
    """Wrap in ``$...$`` unless already delimited, so math-verify parses bare LaTeX."""
    t = s.strip()
    return t if t.startswith(("$", "\\(", "\\[")) else f"${t}$"


def latex_equal(pred: str, gold: str, deadline_s: float = DEADLINE_S) -> bool:
    """math-verify equivalence of two answers, bounded as the module docstring says; any error is False."""
    if too_costly(pred) or too_costly(gold):
        return False
    try:
        import math_verify
        from math_verify.errors import TimeoutException
    except ImportError:  # pragma: no cover - math-verify is a dependency, but fail closed
        return False
    _prepare(math_verify)
    try:
        with _deadline(deadline_s):
            gold_parsed = math_verify.parse(_as_latex(gold), parsing_timeout=None)
            pred_parsed = math_verify.parse(_as_latex(pred), parsing_timeout=None)
            if not gold_parsed or not pred_parsed:
                return False
            return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except (Exception, _Deadline, TimeoutException):  # TimeoutException derives from BaseException
        return False
