"""Grading one extracted answer against its row: the one place training rewards, evaluation and `generate`
decide correctness, so that the three always agree.

The checker comes from the data source (r1kit.data.benchmarks.checker_for: a benchmark's own, the
multiple_choice checker for lettered rows, or ``auto``). Under ``auto`` the row itself may say more:
  - a reasoning-gym row (its ``metadata`` names the task) is scored by the task's own ``score_answer``
    (0..1, partial credit as the task defines it), never by comparing strings;
  - a row with an ``answer_type`` column (a file may carry one) is checked by that type's checker;
  - otherwise the gold's form picks the checker (r1kit.data.answer_types.infer_answer_type).
None means "does not apply": the row has no gold, or its gold is not an answer of the checker's type.
"""

from __future__ import annotations

from typing import Any

from r1kit.data.answers import CHECKERS, extract_hash_answer, judge_answer
from r1kit.data.gym import gym_score, is_gym_row


def gold_answer(gold: Any) -> str | None:
    """Normalise gold: None when missing or empty; a GSM8K ``... #### 18`` solution -> ``"18"``."""
    if gold is None:
        return None
    text = str(gold).strip()
    if "####" in text:
        return extract_hash_answer(text)
    return text or None


def row_checker(row: dict, checker: str) -> str:
    """The checker for this row: ``checker``, or under ``auto`` the row's own ``answer_type`` when it has one."""
    answer_type = row.get("answer_type")
    if checker != "auto" or answer_type in (None, ""):
        return checker
    if answer_type not in CHECKERS:
        raise ValueError(f"row answer_type {answer_type!r} is not a checker; expected one of {list(CHECKERS)}")
    return answer_type


def grade(pred: str | None, row: dict, checker: str = "auto") -> float | None:
    """The score of an extracted answer ``pred`` (None: nothing extracted) for ``row`` (module docstring):
    1.0 or 0.0, a reasoning-gym task's own score, or None when the row's gold does not apply."""
    if checker == "auto" and is_gym_row(row):
        return gym_score(pred, row)
    verdict = judge_answer(pred, gold_answer(row.get("answer")), row_checker(row, checker))
    return None if verdict is None else float(verdict)


def is_correct(score: float | None) -> bool:
    """Whether a grade counts as solved in evaluation: full credit (a reasoning-gym task's partial credit
    is a reward, not a solved problem); a gold that does not apply is not solved."""
    return score is not None and score >= 1.0
