"""GSM8K solutions -> SFT traces in the Tiny-R1 format (a cold start for GSM8K GRPO).

A GSM8K solution is worked steps with calculator annotations, then the final line ``#### N``:

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.
    Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.
    #### 72

becomes the assistant turn

    <reasoning>
    Natalia sold 48/2 = 24 clips in May.
    Natalia sold 48+24 = 72 clips altogether in April and May.
    </reasoning>
    <answer>
    72
    </answer>

(``<think>`` with tag_style="think"), following the Tiny-R1 system prompt's layout. The samples are
chat messages, the shape `r1kit sft` reads (sft.source: gsm8k, or a jsonl written by `r1kit data traces`).
"""

from __future__ import annotations

import re

from r1kit.data.answers import extract_hash_answer
from r1kit.data.templates import build_messages

_CALC_RE = re.compile(r"<<[^<>]*>>")


def gsm8k_trace(solution: str, tag_style: str = "reasoning") -> str:
    """The Tiny-R1 assistant text for one GSM8K solution; ValueError when it has no ``#### N`` value."""
    if tag_style not in ("think", "reasoning"):
        raise ValueError(f"tag_style must be 'think' or 'reasoning', got {tag_style!r}")
    answer = extract_hash_answer(solution)
    if answer is None:
        raise ValueError(f"GSM8K solution has no '#### N' final answer: {solution[-80:]!r}")
    steps = _CALC_RE.sub("", solution[: solution.rindex("####")]).strip()
    return f"<{tag_style}>\n{steps}\n</{tag_style}>\n<answer>\n{answer}\n</answer>"


def gsm8k_sft_samples(rows: list[dict], system_prompt: str = "tiny_r1", tag_style: str = "reasoning",
                      instruction: str = "none") -> list[dict]:
    """Chat samples ``{"messages": [system?, user, assistant]}`` from GSM8K rows (question + solution).

    Rows from the shipped ``gsm8k`` source carry the full solution in ``solution``; rows read from a
    file or the hub keep it in ``answer``.
    """
    samples = []
    for i, row in enumerate(rows):
        solution = row.get("solution") or row.get("answer") or ""
        try:
            trace = gsm8k_trace(str(solution), tag_style)
        except ValueError as e:
            raise ValueError(f"GSM8K row {i}: {e}") from None
        messages = build_messages(row["question"], system_prompt, instruction)
        samples.append({"messages": messages + [{"role": "assistant", "content": trace}]})
    return samples
