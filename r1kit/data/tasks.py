"""The built-in procedural task: arithmetic word problems with checkable answers and reasoning traces.

A problem is a chain of additions and subtractions told as a tiny story:

    question: "Ana has 12 pens, gets 5, loses 3, finds 7, sells 9. How many pens now?"
    answer:   "12"
    working:  "12+5=17. 17-3=14. 14+7=21. 21-9=12."

Every intermediate total stays >= 0 so the story makes sense. Problems are a pure function of
(seed, index), so splits are reproducible; the held-out split is generated first and the train
stream skips any problem whose numbers and operations appear in it, so the two never overlap.

The SFT traces come in two honest styles (see DESIGN.md, "The built-in tiny world"):
  - working: ``<think>12+5=17. 17-3=14. ...</think><answer>12</answer>``
  - direct:  ``<think></think><answer>12</answer>``
A cold start on a mix of the two gives GRPO a policy that usually answers directly (weak on
five-operand chains) but can also sample the step-by-step style (strong): RL then learns that
thinking pays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Ana", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Ida", "Jo", "Kim", "Lu", "Max", "Ned", "Ora")
ITEMS = ("pens", "cards", "coins", "eggs", "shells", "stamps", "nuts", "beads", "books", "cups")
GAIN_VERBS = ("gets", "finds", "buys", "wins")
LOSS_VERBS = ("loses", "gives", "sells", "uses")

HELDOUT_SEED_OFFSET = 1_000_003  # held-out problems come from a different random stream than train


@dataclass(frozen=True)
class ArithProblem:
    """One word problem: operands[0] then (sign, operand) steps; totals never go below zero."""

    operands: tuple[int, ...]
    signs: tuple[int, ...]  # +1 or -1 for operands[1:]
    name: str
    item: str
    verbs: tuple[str, ...]

    @property
    def key(self) -> tuple:
        """Identity of the arithmetic (names and verbs aside): used to keep splits disjoint."""
        return (self.operands, self.signs)

    @property
    def answer(self) -> int:
        total = self.operands[0]
        for sign, x in zip(self.signs, self.operands[1:]):
            total += sign * x
        return total

    @property
    def question(self) -> str:
        steps = ", ".join(f"{verb} {x}" for verb, x in zip(self.verbs, self.operands[1:]))
        return f"{self.name} has {self.operands[0]} {self.item}, {steps}. How many {self.item} now?"

    @property
    def working(self) -> str:
        """Step-by-step working, one equation per operation: ``12+5=17. 17-3=14.``"""
        total, parts = self.operands[0], []
        for sign, x in zip(self.signs, self.operands[1:]):
            new = total + sign * x
            parts.append(f"{total}{'+' if sign > 0 else '-'}{x}={new}.")
            total = new
        return " ".join(parts)


def make_problem(rng: random.Random, num_operands: int, max_operand: int) -> ArithProblem:
    """Sample one problem; signs are drawn so that no running total goes below zero."""
    operands = [rng.randint(1, max_operand)]
    signs: list[int] = []
    verbs: list[str] = []
    total = operands[0]
    for _ in range(num_operands - 1):
        x = rng.randint(1, max_operand)
        sign = rng.choice((1, -1)) if x <= total else 1
        operands.append(x)
        signs.append(sign)
        verbs.append(rng.choice(GAIN_VERBS if sign > 0 else LOSS_VERBS))
        total += sign * x
    return ArithProblem(tuple(operands), tuple(signs), rng.choice(NAMES), rng.choice(ITEMS), tuple(verbs))


def to_row(problem: ArithProblem) -> dict:
    """The dataset row every r1kit source produces: question, answer (a string), plus the working."""
    return {"question": problem.question, "answer": str(problem.answer), "working": problem.working}


def arith_split(split: str, size: int, seed: int = 0, num_operands: int = 5, max_operand: int = 20) -> list[dict]:
    """Rows of the `train` or `heldout` split (deterministic in all arguments).

    The train split skips every problem whose arithmetic appears in the first 2,000 held-out
    problems, so any held-out evaluation of up to that size never sees a training problem.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"tiny_arith split must be 'train' or 'heldout', got {split!r}")
    if num_operands < 2 or max_operand < 1:
        raise ValueError(f"tiny_arith needs num_operands >= 2 and max_operand >= 1, got {num_operands}, {max_operand}")
    heldout_rng = random.Random(seed + HELDOUT_SEED_OFFSET)
    heldout = [make_problem(heldout_rng, num_operands, max_operand) for _ in range(max(size, 2000) if split == "heldout" else 2000)]
    if split == "heldout":
        return [to_row(p) for p in heldout[:size]]
    banned = {p.key for p in heldout}
    rng, rows = random.Random(seed), []
    while len(rows) < size:
        problem = make_problem(rng, num_operands, max_operand)
        if problem.key not in banned:
            rows.append(to_row(problem))
    return rows


def first_number(row: dict) -> int:
    """The number a row's problem starts with (read from its working: ``"17+11=28. ..."`` -> 17)."""
    return int(row["working"].split("+")[0].split("-")[0])


def expression(row: dict) -> str:
    """The problem as one arithmetic expression, read from its working: ``"17+11=28. 28-3=25."`` -> ``"17+11-3"``."""
    steps = [eq.split("=")[0] for eq in row["working"].rstrip(".").split(". ")]
    first = steps[0]
    return first + "".join(step[len(str(int(step.replace("-", "+").split("+")[0]))):] for step in steps[1:])


def tool_turns(row: dict) -> tuple[str, str]:
    """The two assistant turns of a trace that asks the calculator (plain tool-call format, r1kit.tools.calls):
    the call, then, after the tool's answer, the answer. r1kit.sft inserts the tool message between them."""
    return f'<tool_call>calculator("{expression(row)}")</tool_call>', f"<answer>{row['answer']}</answer>"


def trace(row: dict, style: str, think_tag: str = "think") -> str:
    """The assistant's target text for SFT in the given style (`working` or `direct`)."""
    if style not in ("working", "direct"):
        raise ValueError(f"trace style must be 'working' or 'direct', got {style!r}")
    reasoning = row["working"] if style == "working" else ""
    return f"<{think_tag}>{reasoning}</{think_tag}><answer>{row['answer']}</answer>"
