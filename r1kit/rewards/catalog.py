"""Built-in rewards. Each is a plain function registered by name; see registry.py for the contract.

To add one: write ``fn(completions, <columns you need>, <params with defaults>, **kwargs)``
returning one float (or None) per completion, decorate it with ``@register("name")``, give it a
docstring saying what it rewards, and add rows to tests/test_rewards.py.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from r1kit.data.answers import CheckerName, ExtractMode, check_answer, extract_answer, extract_hash_answer
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


def gold_answer(gold: Any) -> str | None:
    """Normalise gold: None when missing or empty; a GSM8K ``... #### 18`` solution -> ``"18"``."""
    if gold is None:
        return None
    text = str(gold).strip()
    if "####" in text:
        return extract_hash_answer(text)
    return text or None


@register("accuracy")
def accuracy_reward(
    completions: list, answer: list, extract: ExtractMode = "auto", checker: CheckerName = "auto",
    **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold ``answer`` column, else 0.0.

    The answer is taken with ``extract_answer(text, extract)`` (default: ``<answer>`` tag, else
    ``\\boxed{}``, else ``####``) and compared with ``check_answer(pred, gold, checker)``:
    ``"auto"``/``"math"`` try numbers, strings, then math-verify; ``"numeric"`` accepts only equal
    numbers (GSM8K, AIME, AMC). No extracted answer scores 0.0; a row without gold scores None. Use
    ``extract="tag"`` to credit only answers given inside ``<answer>``, never ones left in the
    reasoning.
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        target = gold_answer(gold)
        if target is None:
            rewards.append(None)
            continue
        pred = extract_answer(completion_text(completion), mode=extract)
        rewards.append(1.0 if check_answer(pred, target, checker) else 0.0)
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


# The shaping rewards (tag_count, think_tags, unique_chars, length, repetition, soft_overlong) live in
# their own module; importing it here registers them whenever the catalog is loaded.
from r1kit.rewards import shaping  # noqa: E402, F401
