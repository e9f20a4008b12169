"""Shaping rewards: structure, diversity, length and repetition, next to accuracy/format in catalog.py.

All follow the TRL contract (registry.py). Sources, and where r1kit differs:
  tag_count      open-r1's partial format credit, 0.25 per reasoning/answer tag present exactly once;
                 r1kit does not insist on the newlines around the tags.
  think_tags     1.0 for a closed reasoning block with content before any answer (the seed tutorial's
                 "think" reward), so an empty ``<think></think>`` earns nothing.
  unique_chars   distinct characters / characters (the seed tutorial's diversity reward), in [0, 1].
  length         cosine-scaled length reward ("Demystifying Long Chain-of-Thought Reasoning", as in open-r1):
                 short correct answers earn most, long wrong answers are punished least.
  repetition     open-r1's n-gram penalty: (1 - distinct n-grams / n-grams) * max_penalty over words.
  soft_overlong  DAPO's soft overlong punishment on the token count ``len(completion_ids[i])``.
  reasoning_gym  a reasoning-gym task's own scorer, for rows from a ``reasoning_gym:<task>`` source.
The seed tutorial's 0.7 think + 0.3 unique mix is a recipe (recipes/tiny/think-unique.yaml), not a function.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from r1kit.data.answers import CheckerName, ExtractMode, extract_answer
from r1kit.data.grading import grade, is_correct
from r1kit.data.gym import gym_score, is_gym_row
from r1kit.rewards.catalog import FORMAT_STYLES, FormatStyle, completion_text, row_of
from r1kit.rewards.registry import register


def _style_tag(style: str) -> str:
    if style not in FORMAT_STYLES:
        raise ValueError(f"style must be one of {list(FORMAT_STYLES)}, got {style!r}")
    return FORMAT_STYLES[style]


@register("tag_count")
def tag_count_reward(completions: list, style: FormatStyle = "think", **kwargs: Any) -> list[float]:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` that appears exactly once.

    Partial credit helps a model that has not found the format yet; repeating a tag forfeits its share.
    style="reasoning" counts ``<reasoning>`` tags instead of ``<think>``.
    """
    think = _style_tag(style)
    tags = (f"<{think}>", f"</{think}>", "<answer>", "</answer>")
    return [sum(0.25 for tag in tags if completion_text(c).count(tag) == 1) for c in completions]


@register("think_tags")
def think_tags_reward(completions: list, style: FormatStyle = "think", **kwargs: Any) -> list[float]:
    """1.0 when the completion opens with a closed reasoning block holding non-blank text, else 0.0.

    The block must come first (leading whitespace aside), be closed, and contain no answer tag; the
    opening tag must occur once. An empty block, ``</think>`` before ``<think>``, or nesting scores 0.
    """
    think = _style_tag(style)
    pattern = re.compile(rf"\s*<{think}>(.*?)</{think}>", flags=re.DOTALL)
    rewards = []
    for c in completions:
        text = completion_text(c)
        m = pattern.match(text)
        ok = (m is not None and m.group(1).strip() != "" and text.count(f"<{think}>") == 1
              and "<answer>" not in m.group(1) and "</answer>" not in m.group(1))
        rewards.append(1.0 if ok else 0.0)
    return rewards


@register("unique_chars")
def unique_chars_reward(completions: list, **kwargs: Any) -> list[float]:
    """Distinct characters / total characters, in [0, 1]; an empty completion scores 0.

    A diversity signal against degenerate repetition ("aaaa..." -> near 0). It favours short
    completions too, so weight it low next to a reward for the behaviour you want.
    """
    rewards = []
    for c in completions:
        text = completion_text(c)
        rewards.append(len(set(text)) / len(text) if text else 0.0)
    return rewards


def _lengths(completions: list, completion_ids: list | None, unit: str, reward: str) -> list[int]:
    """Completion lengths in tokens (from ``completion_ids``) or characters; no silent fallback."""
    if unit == "chars":
        return [len(completion_text(c)) for c in completions]
    if unit != "tokens":
        raise ValueError(f"{reward}: unit must be 'tokens' or 'chars', got {unit!r}")
    if completion_ids is None:
        raise ValueError(f"{reward} counts tokens and needs the completion_ids column (one token-id list per "
                         "completion, as the r1kit trainer and TRL pass it); it was not passed")
    if len(completion_ids) != len(completions):
        raise ValueError(f"{reward}: {len(completion_ids)} completion_ids for {len(completions)} completions")
    return [len(ids) for ids in completion_ids]


def check_length_params(max_len: Any, min_value_wrong: Any, max_value_wrong: Any, min_value_correct: Any,
                        max_value_correct: Any, **_: Any) -> None:
    """``length``'s ranges: max_len >= 1, and each min_value_* <= its max_value_*."""
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"needs an integer max_len >= 1, got max_len={max_len!r}")
    ranges = ((min_value_wrong, max_value_wrong, "wrong"), (min_value_correct, max_value_correct, "correct"))
    for lo, hi, which in ranges:
        if not lo <= hi:
            raise ValueError(f"needs min_value_{which} <= max_value_{which}, got {lo!r} > {hi!r}")


@register("length", check=check_length_params)
def cosine_length_reward(completions: list, answer: list, completion_ids: list | None = None,
                         max_len: int = 1000, unit: Literal["tokens", "chars"] = "tokens", min_value_wrong: float = -1.0,
                         max_value_wrong: float = -0.5, min_value_correct: float = 0.5,
                         max_value_correct: float = 1.0, extract: ExtractMode = "auto", checker: CheckerName = "auto",
                         **kwargs: Any) -> list[float | None]:
    """Cosine-scaled length reward: correctness sets the range, length the position within it.

    With progress p = min(L, max_len) / max_len and cos_p = cos(pi * p):
      correct: min_value_correct + (max_value_correct - min_value_correct) * (1 + cos_p) / 2
               (shortest earns max_value_correct, max_len earns min_value_correct)
      wrong:   the same formula with the wrong range swapped, so a short wrong answer earns
               min_value_wrong and a long one max_value_wrong: think longer when you are wrong.
    L counts tokens (``completion_ids``, required) or characters with unit="chars". Correct means full
    credit from the grader the accuracy reward uses (r1kit.data.grading). No gold, or one that does not
    apply: None.
    """
    check_length_params(max_len, min_value_wrong, max_value_wrong, min_value_correct, max_value_correct)
    lengths = _lengths(completions, completion_ids, unit, "length")
    if len(answer) != len(completions):
        raise ValueError(f"length: {len(answer)} answers for {len(completions)} completions")
    rewards: list[float | None] = []
    for i, (c, length) in enumerate(zip(completions, lengths, strict=True)):
        score = grade(extract_answer(completion_text(c), extract), row_of(i, answer, kwargs), checker)
        if score is None:
            rewards.append(None)
            continue
        cos_p = math.cos(math.pi * min(length, max_len) / max_len)
        lo, hi = (min_value_correct, max_value_correct) if is_correct(score) else (max_value_wrong, min_value_wrong)
        rewards.append(lo + (hi - lo) * (1.0 + cos_p) / 2)
    return rewards


def check_repetition_params(ngram_size: Any, max_penalty: Any, **_: Any) -> None:
    """``repetition``'s ranges: ngram_size an integer >= 1, max_penalty <= 0 (a penalty)."""
    if not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"needs an integer ngram_size >= 1, got ngram_size={ngram_size!r}")
    if not max_penalty <= 0:
        raise ValueError(f"needs max_penalty <= 0 (it is a penalty), got max_penalty={max_penalty!r}")


@register("repetition", check=check_repetition_params)
def repetition_reward(completions: list, ngram_size: int = 3, max_penalty: float = -1.0,
                      **kwargs: Any) -> list[float]:
    """N-gram repetition penalty over whitespace-separated words, in [max_penalty, 0].

    penalty = (1 - distinct n-grams / n-grams) * max_penalty; completions shorter than one n-gram score 0.
    """
    check_repetition_params(ngram_size, max_penalty)
    rewards = []
    for c in completions:
        words = completion_text(c).lower().split()
        grams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        rewards.append((1 - len(set(grams)) / len(grams)) * max_penalty if grams else 0.0)
    return [r + 0.0 for r in rewards]  # + 0.0 turns -0.0 into 0.0


def check_soft_overlong_params(max_completion_length: Any, overlong_buffer: Any, **_: Any) -> None:
    """``soft_overlong``'s ranges: integers with 0 < overlong_buffer <= max_completion_length."""
    if not all(isinstance(v, int) for v in (max_completion_length, overlong_buffer)) \
            or not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(f"needs integers with 0 < overlong_buffer <= max_completion_length, got overlong_buffer="
                         f"{overlong_buffer!r}, max_completion_length={max_completion_length!r}")


@register("soft_overlong", check=check_soft_overlong_params)
def soft_overlong_reward(completions: list, completion_ids: list | None = None, max_completion_length: int = 64,
                         overlong_buffer: int = 16, **kwargs: Any) -> list[float]:
    """DAPO's soft overlong punishment on the completion's token count L = len(completion_ids[i]).

    0 while L <= max_completion_length - overlong_buffer, then linearly down to -1 at
    max_completion_length, and -1 beyond. Set max_completion_length to rollout.max_completion_length.
    Raises if completion_ids is missing: counting characters instead would punish the wrong lengths.
    """
    check_soft_overlong_params(max_completion_length, overlong_buffer)
    expected = max_completion_length - overlong_buffer
    rewards = []
    for length in _lengths(completions, completion_ids, "tokens", "soft_overlong"):
        if length <= expected:
            rewards.append(0.0)
        else:
            rewards.append(max(-1.0, (expected - length) / overlong_buffer))
    return rewards


@register("reasoning_gym")
def reasoning_gym_reward(completions: list, metadata: list, question: list | None = None, answer: list | None = None,
                         extract: ExtractMode = "tag", **kwargs: Any) -> list[float | None]:
    """A reasoning-gym task's own score (0..1) of the extracted answer; rows without task metadata: None.

    Needs the reasoning-gym extra and rows from a ``reasoning_gym:<task>`` source, whose ``metadata``
    column names the task. Answers are extracted with ``extract`` (default: the ``<answer>`` tag).
    """
    rewards: list[float | None] = []
    for i, (c, meta) in enumerate(zip(completions, metadata, strict=True)):
        row = {"question": question[i] if question else "", "answer": answer[i] if answer else None, "metadata": meta}
        rewards.append(gym_score(extract_answer(completion_text(c), extract), row) if is_gym_row(row) else None)
    return rewards
