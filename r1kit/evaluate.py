"""Evaluation: greedy accuracy and sampled pass@1 on held-out problems, through any Engine.

Greedy accuracy is the headline number (deterministic). Sampled pass@1 averages correctness
over `n_samples` completions per problem at `temperature` (seeded), the estimator R1 reports.
A `prefill` forces the start of the answer, which the tiny world uses to measure each answer
style separately (e.g. prefill ``<think></think><answer>`` forces a direct answer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from r1kit.data.tasks import first_number
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.rewards import get_reward
from r1kit.types import SamplingParams


@dataclass
class EvalResult:
    greedy_accuracy: float  # fraction of problems whose greedy answer is correct
    sampled_pass1: float | None  # mean correctness over n samples per problem (None if n = 0)
    num_problems: int
    mean_length: float  # greedy completion length in tokens
    truncated: float  # fraction of greedy completions cut at the length cap
    reasoning_share: float  # fraction of greedy completions with non-empty <think>/<reasoning> content
    items: list[dict] = field(default_factory=list)  # per problem: question, answer, completion, correct

    def summary(self) -> dict:
        out = {"greedy_accuracy": self.greedy_accuracy, "num_problems": self.num_problems,
               "mean_length": self.mean_length, "truncated": self.truncated, "reasoning_share": self.reasoning_share}
        if self.sampled_pass1 is not None:
            out["sampled_pass1"] = self.sampled_pass1
        return out


def evaluate(engine, tokenizer, rows: list[dict], *, system_prompt: str = "none", max_new_tokens: int = 64,
             n_samples: int = 0, temperature: float = 1.0, seed: int = 0,
             prefill: Callable[[dict], str] | None = None) -> EvalResult:
    """Score `rows` (question/answer dicts) with the accuracy reward; see the module docstring."""
    accuracy = get_reward("accuracy")
    prefixes = [prefill(row) if prefill else "" for row in rows]
    prompts = [encode_prompt(tokenizer, build_messages(row["question"], system_prompt))
               + (tokenizer(p, add_special_tokens=False).input_ids if p else []) for row, p in zip(rows, prefixes)]
    answers = [row["answer"] for row in rows]

    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    greedy_texts = [p + c.text for p, c in zip(prefixes, greedy)]
    greedy_scores = [s or 0.0 for s in accuracy(greedy_texts, answer=answers)]
    items = [{"question": row["question"], "answer": row["answer"], "completion": text, "correct": score}
             for row, text, score in zip(rows, greedy_texts, greedy_scores)]

    sampled_pass1 = None
    if n_samples > 0:
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        samples = engine.generate(prompts, n_samples, sampling)
        texts = [prefixes[c.prompt_index] + c.text for c in samples]
        scores = [s or 0.0 for s in accuracy(texts, answer=[answers[c.prompt_index] for c in samples])]
        sampled_pass1 = sum(scores) / len(scores)
        for i, item in enumerate(items):
            item["sampled_correct"] = scores[i * n_samples:(i + 1) * n_samples]

    return EvalResult(
        greedy_accuracy=sum(greedy_scores) / len(rows), sampled_pass1=sampled_pass1, num_problems=len(rows),
        mean_length=sum(len(c.token_ids) for c in greedy) / len(greedy),
        truncated=sum(c.finish_reason == "length" for c in greedy) / len(greedy),
        reasoning_share=sum(map(shows_reasoning, greedy_texts)) / len(greedy_texts), items=items)


def shows_reasoning(text: str) -> bool:
    """True when the completion's <think> (or <reasoning>) block holds anything but whitespace."""
    match = re.search(r"<(think|reasoning)>(.*?)(</\1>|$)", text, flags=re.DOTALL)
    return bool(match and match.group(2).strip())


def tiny_style_prefills() -> dict[str, Callable[[dict], str]]:
    """Prefills that force each tiny_arith answer style: direct, or working (its first number given)."""
    return {
        "direct": lambda row: "<think></think><answer>",
        "working": lambda row: f"<think>{first_number(row)}",
    }
