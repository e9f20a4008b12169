"""Built-in rewards: correctness and format. Each is a plain function registered by name; see registry.py
for the contract. The shaping rewards are in shaping.py; the package's ``__init__`` imports both.

To add one: write ``fn(completions, <columns you need>, <params with defaults>, **kwargs)``
returning one float (or None) per completion, decorate it with ``@register("name")`` (with
``check=`` when a parameter has a range), give it a docstring saying what it rewards, and add rows
to tests/test_rewards.py.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from r1kit.data.answers import CheckerName, ExtractMode, extract_answer
from r1kit.data.grading import gold_answer, grade  # noqa: F401  (gold_answer: re-exported, r1kit.rewards has it)
from r1kit.rewards.registry import register


def completion_text(completion: Any) -> str:
    """Text of one completion: a string as is, or the last message's content of a chat-format
    completion (TRL passes ``[{"role": "assistant", "content": ...}]`` for conversational data).
    Content given as a list of parts (``[{"type": "text", "text": ...}, ...]``) is the parts' text
    joined; parts without text (images) add nothing.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        completion = completion[-1]
    if isinstance(completion, dict):
        return content_text(completion.get("content"))
    return "" if completion is None else str(completion)


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text of a list of parts joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text") or "") if isinstance(p, dict) else ""
                       for p in content)
    return str(content)


def row_of(i: int, answer: list, columns: dict[str, Any]) -> dict:
    """Completion i's row, as the grader reads it: its gold ``answer`` and, where the data has them, its
    ``question``, reasoning-gym ``metadata`` and ``answer_type`` (TRL passes every column as a list)."""
    row = {"answer": answer[i]}
    for key in ("question", "metadata", "answer_type"):
        values = columns.get(key)
        if isinstance(values, (list, tuple)) and len(values) == len(answer):
            row[key] = values[i]
    return row


@register("accuracy")
def accuracy_reward(
    completions: list, answer: list, extract: ExtractMode = "auto", checker: CheckerName = "auto",
    **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion's final answer is the gold ``answer``, else 0.0; None where it does not apply.

    The answer is taken with ``extract_answer(text, extract)`` (default: ``<answer>`` tag, else
    ``\\boxed{}``, else ``####``) and graded by r1kit.data.grading for its answer type: ``checker``
    (the trainer sets the data source's own, as evaluation does: ``numeric`` for GSM8K, AIME, AMC;
    ``math`` for MATH-500; ``multiple_choice`` for lettered rows), or under ``auto`` a reasoning-gym
    row's own ``score_answer`` (0..1), a row's ``answer_type`` column, or the type the gold's form
    says (numbers, math, text, lists, booleans: never words through math-verify). No extracted answer
    scores 0.0; a row without gold, or whose gold is not an answer of the checker's type, scores None.
    Use ``extract="tag"`` to credit only answers given inside ``<answer>``.
    """
    if len(answer) != len(completions):
        raise ValueError(f"accuracy: {len(answer)} answers for {len(completions)} completions")
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        row = row_of(i, answer, kwargs)
        pred = extract_answer(completion_text(completion), mode=extract)
        rewards.append(grade(pred, row, checker))
    return rewards


FORMAT_STYLES = {"think": "think", "reasoning": "reasoning"}  # style -> reasoning tag name
FormatStyle = Literal["think", "reasoning"]  # = FORMAT_STYLES' keys; a Literal, so a bad value fails at load


def _strict_format_ok(text: str, think: str) -> bool:
    """``<think>..</think>`` ws ``<answer>..</answer>`` and nothing else, each tag exactly once."""
    text = text.strip()
    tags = (f"<{think}>", f"</{think}>", "<answer>", "</answer>")
    if any(text.count(tag) != 1 for tag in tags):
        return False
    pattern = rf"<{think}>.*</{think}>\s*<answer>.*</answer>"
    return re.fullmatch(pattern, text, flags=re.DOTALL) is not None


def _soft_format_ok(text: str, think: str) -> bool:
    """The reasoning pair then the answer pair appear in that order, anything around them."""
    pattern = rf"<{think}>.*?</{think}>.*?<answer>.*?</answer>"
    return re.search(pattern, text, flags=re.DOTALL) is not None


_FORMAT_CHECKS = {"strict": _strict_format_ok, "soft": _soft_format_ok}


@register("format")
def format_reward(
    completions: list, mode: Literal["strict", "soft"] = "strict", style: FormatStyle = "think", **kwargs: Any
) -> list[float]:
    """1.0 when the completion follows the reasoning-then-answer format, else 0.0.

    mode="strict": the whole completion (surrounding whitespace aside) is ``<think>...</think>``,
    optional whitespace, ``<answer>...</answer>``, each tag exactly once and nothing after, which
    also catches a model that keeps generating past ``</answer>``. mode="soft": the two pairs
    appear in that order somewhere, extra text allowed. style="reasoning" uses ``<reasoning>``
    in place of ``<think>``.
    """
    if mode not in _FORMAT_CHECKS:
        raise ValueError(f"format mode must be one of {list(_FORMAT_CHECKS)}, got {mode!r}")
    if style not in FORMAT_STYLES:
        raise ValueError(f"format style must be one of {list(FORMAT_STYLES)}, got {style!r}")
    check, think = _FORMAT_CHECKS[mode], FORMAT_STYLES[style]
    return [1.0 if check(completion_text(c), think) else 0.0 for c in completions]
