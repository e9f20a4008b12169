"""How often r1kit's grading disagrees with the peers' scorers, on reasoning-gym completions.

For each task, held-out rows and completions that write the gold, and the gold changed the ways that used to
fool the symbolic checker (case, order, spacing, reversed, an extra word, "None", nothing), are scored by:
  task      the task's own ``score_answer`` (reasoning-gym: the reference)
  r1kit     r1kit's default ``accuracy`` reward (now the task's scorer for reasoning-gym rows)
  typed     r1kit's answer-type checkers alone (the ``auto`` checker on the same gold without the task's
            metadata, as a file of these rows would be graded): an independent check of the typed checkers
  symbolic  the checker ``accuracy`` used before answer types: numbers exactly, else string equality, else
            math-verify (r1kit.data.answers.answers_match)
  mathverify  math-verify alone, as TRL's and open-r1's accuracy rewards call it: verify(parse(gold), parse(pred))
For r1kit a disagreement is a completion whose score differs from the task's in value (partial credit
included); the other three are right/wrong checkers, so for them it is a different verdict on whether the
answer is fully right (the task's score 1.0). Prints a table and writes
benchmarks/results/answer_grading_vs_peers.json.

    python benchmarks/answer_grading_vs_peers.py [--rows 25]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

TASKS = ("word_sorting", "letter_jumble", "caesar_cipher", "number_sorting", "chain_sum", "family_relationships",
         "basic_arithmetic", "letter_counting")


def variants(answer: str) -> list[str]:
    items = [i.strip() for i in answer.split(",")]
    return [answer, answer.lower(), answer.upper(), answer.swapcase(), ", ".join(reversed(items)),
            ",".join(items), answer[::-1], answer + " extra", "None", ""]


def symbolic(pred: str, gold: str) -> float:
    from r1kit.data.answers import answers_match, numeric_match, parse_exact

    return float(bool(numeric_match(pred, gold) if parse_exact(gold) is not None else answers_match(pred, gold)))


def math_verify_alone(pred: str, gold: str) -> float:
    from math_verify import parse, verify

    try:
        return float(bool(verify(parse(gold), parse(pred))))
    except Exception:  # math-verify raises on some inputs; TRL's reward scores those 0
        return 0.0


def main() -> None:
    import reasoning_gym

    from r1kit.config import DataCfg
    from r1kit.data.grading import grade
    from r1kit.data.sources import load_rows
    from r1kit.rewards import accuracy_reward

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    table, start = [], time.perf_counter()
    for task in TASKS:
        rows = load_rows(DataCfg(source=f"reasoning_gym:{task}"), "heldout", size=args.rows)
        scorer = reasoning_gym.get_score_answer_fn(task)
        counts = {"completions": 0, "r1kit": 0, "typed": 0, "symbolic": 0, "mathverify": 0}
        for row in rows:
            texts = variants(row["answer"])
            columns = {k: [row[k]] * len(texts) for k in ("answer", "question", "metadata")}
            ours = accuracy_reward([f"<answer>{t}</answer>" for t in texts], **columns)
            for text, mine in zip(texts, ours):
                reference = float(scorer(text, row))
                counts["completions"] += 1
                counts["r1kit"] += mine != reference
                solved = reference >= 1.0
                counts["typed"] += ((grade(text, {"answer": row["answer"]}) or 0.0) >= 1.0) != solved
                counts["symbolic"] += (symbolic(text, row["answer"]) >= 1.0) != solved
                counts["mathverify"] += (math_verify_alone(text, row["answer"]) >= 1.0) != solved
        table.append({"task": task, **counts})
        print(f"{task:22s} {counts['completions']:5d} completions; disagreements with score_answer: "
              f"r1kit {counts['r1kit']:4d}  typed {counts['typed']:4d}  symbolic {counts['symbolic']:4d}  math-verify {counts['mathverify']:4d}")
    total = {k: sum(r[k] for r in table) for k in ("completions", "r1kit", "typed", "symbolic", "mathverify")}
    print(f"{'all':22s} {total['completions']:5d} completions; disagreements with score_answer: "
          f"r1kit {total['r1kit']:4d}  typed {total['typed']:4d}  symbolic {total['symbolic']:4d}  math-verify {total['mathverify']:4d}")
    out = Path(__file__).resolve().parent / "results" / "answer_grading_vs_peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tasks": table, "total": total, "rows_per_task": args.rows,
                               "seconds": round(time.perf_counter() - start, 1), "machine": platform.platform()},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
