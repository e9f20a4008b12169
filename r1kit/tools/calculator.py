"""The built-in `calculator` tool: exact arithmetic on numbers, without eval.

The expression is parsed with `ast` and only numbers, + - * / // % **, unary signs and parentheses are
evaluated, on `fractions.Fraction`: decimals and fractions are exact (0.1 + 0.2 is 0.3), and a result is
written as an integer, an exact decimal, or a fraction when it has no finite decimal form.
Anything else (names, calls, attributes, strings) is refused, so nothing the policy writes runs as code.
"""

from __future__ import annotations

import ast
import operator
from decimal import Decimal
from fractions import Fraction

MAX_EXPONENT = 1000  # 2**10**9 would take the trainer's memory
MAX_DIGITS = 4000  # intermediate results longer than this are refused
MAX_CHARS = 500

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "12*(3+4) - 5/2"

    Returns:
        The exact result: an integer, a decimal, or a fraction such as 1/3.

    >>> calculator("0.1 + 0.2"), calculator("7 / 3"), calculator("2**10 - 24")
    ('0.3', '7/3', '1000')
    """
    if not isinstance(expression, str) or len(expression) > MAX_CHARS:
        raise ValueError(f"expression must be a string of at most {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    return _format(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(Decimal(repr(node.value)))  # 0.1 is one tenth, not the nearest binary float
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponents must be integers of at most {MAX_EXPONENT} in size")
            size = max(left.numerator.bit_length(), left.denominator.bit_length()) * abs(right) * 0.302  # digits
            if size > MAX_DIGITS:
                raise ValueError(f"result longer than {MAX_DIGITS} digits")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        result = _BINARY[type(node.op)](left, right)
        if max(len(str(result.numerator)), len(str(result.denominator))) > MAX_DIGITS:
            raise ValueError(f"result longer than {MAX_DIGITS} digits")
        return Fraction(result)
    raise ValueError(f"not allowed in an arithmetic expression: {ast.dump(node)[:80]}")


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    k = 0  # the smallest k with denominator | 10**k, if any: then the decimal form is finite and exact
    while (10 ** k) % value.denominator and k <= MAX_DIGITS:
        k += 1
    if (10 ** k) % value.denominator:
        return f"{value.numerator}/{value.denominator}"
    digits = str(abs(value.numerator) * 10 ** k // value.denominator).rjust(k + 1, "0")
    text = f"{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")
    return ("-" if value < 0 else "") + text
