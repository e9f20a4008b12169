"""Evaluation through any Engine: greedy accuracy, sampled pass@1, pass@k and maj@k.

Greedy accuracy is the deterministic headline number. With ``n_samples`` > 0 each problem is also
sampled n times at ``temperature``/``top_p`` (seeded): sampled pass@1 (R1's estimator), the
unbiased pass@k and maj@k for each k in ``ks`` (metrics.py). Answers are extracted with
``extract`` (answers.extract_answer) and graded as training grades them (r1kit.data.grading: ``checker``,
numeric for GSM8K/AIME/AMC, math for MATH-500, or by answer type; a reasoning-gym task's own scorer,
where full credit counts as solved). A ``prefill`` forces the start of the answer, which the tiny world
uses to measure each answer style separately (e.g. ``<think></think><answer>`` forces a direct answer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from r1kit.data.answers import check_answer, extract_answer
from r1kit.data.grading import gold_answer, grade, is_correct
from r1kit.data.tasks import first_number
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.evaluate.metrics import default_ks, maj_at_k, pass_at_k
from r1kit.types import SamplingParams


@dataclass
class EvalResult:
    greedy_accuracy: float  # fraction of problems whose greedy answer is correct
    sampled_pass1: float | None  # mean correctness over n samples per problem (None if n = 0)
    num_problems: int
    mean_length: float  # greedy completion length in tokens
    truncated: float  # fraction of greedy completions cut at the length cap
    reasoning_share: float  # fraction of greedy completions with non-empty <think>/<reasoning> content
    items: list[dict] = field(default_factory=list)  # per problem: question, answer, completion, correct, ...
    n_samples: int = 0
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> mean unbiased pass@k over problems
    maj_at: dict[int, float] = field(default_factory=dict)  # k -> share of problems whose majority answer is right
    no_answer: float = 0.0  # fraction of greedy completions with no extractable answer
    tool_share: float | None = None  # fraction of greedy completions that call a tool (None: no tools)

    @classmethod
    def from_items(cls, items: list[dict], n_samples: int, ks: list[int]) -> "EvalResult":
        """The aggregate of per-problem items (e.g. gathered from several processes)."""
        count = len(items)
        result = cls(
            greedy_accuracy=sum(it["correct"] for it in items) / count, sampled_pass1=None, num_problems=count,
            mean_length=sum(it["length"] for it in items) / count,
            truncated=sum(it["finish_reason"] == "length" for it in items) / count,
            reasoning_share=sum(shows_reasoning(it["completion"]) for it in items) / count, items=items,
            no_answer=sum(it["extracted"] is None for it in items) / count)
        if any("tool_calls" in it for it in items):
            result.tool_share = sum(it.get("tool_calls", 0) > 0 for it in items) / count
        if n_samples > 0:
            result.n_samples = n_samples
            result.sampled_pass1 = sum(sum(it["sampled_correct"]) / n_samples for it in items) / count
            result.pass_at = {k: sum(it["pass@k"][k] for it in items) / count for k in ks}
            result.maj_at = {k: sum(it["maj@k"][k] for it in items) / count for k in ks}
        return result

    def summary(self) -> dict:
        out = {"greedy_accuracy": self.greedy_accuracy, "num_problems": self.num_problems,
               "mean_length": self.mean_length, "truncated": self.truncated, "reasoning_share": self.reasoning_share,
               "no_answer": self.no_answer}
        if self.tool_share is not None:
            out["tool_share"] = self.tool_share
        if self.sampled_pass1 is not None:
            out["n_samples"] = self.n_samples
            out["sampled_pass1"] = self.sampled_pass1
            out |= {f"pass@{k}": v for k, v in self.pass_at.items()}
            out |= {f"maj@{k}": v for k, v in self.maj_at.items()}
        return out


def evaluate(engine, tokenizer, rows: list[dict], *, system_prompt: str = "none", max_new_tokens: int = 64,
             n_samples: int = 0, temperature: float = 1.0, seed: int = 0,
             prefill: Callable[[dict], str] | None = None, instruction: str = "none", prompt_format: str = "chat",
             top_p: float = 1.0, extract: str = "auto", checker: str = "auto",
             ks: list[int] | None = None, index_offset: int = 0, tools: list[dict] | None = None) -> EvalResult:
    """Score `rows` (question/answer dicts); see the module docstring.

    index_offset: the index of rows[0] in the whole evaluation set, when several processes each score
    a share: items are numbered, and sampled, by that global index, so the split does not change them.
    tools: the tools' JSON schemas the chat template writes into the prompt (rollout.tool_call_format=template).
    """
    if not rows:
        raise ValueError("evaluate: no problems to evaluate")
    ks = ks or default_ks(n_samples)
    if n_samples > 0 and [k for k in ks if not 1 <= k <= n_samples]:
        raise ValueError(f"evaluate: every k must be in [1, n_samples={n_samples}], got {ks}")
    prefixes = [prefill(row) if prefill else "" for row in rows]
    prompts = [encode_prompt(tokenizer, build_messages(row["question"], system_prompt, instruction), prompt_format, tools)
               + (tokenizer(p, add_special_tokens=False).input_ids if p else []) for row, p in zip(rows, prefixes)]
    golds = [gold_answer(row["answer"]) for row in rows]

    def score(texts: list[str], i: int) -> tuple[list[str | None], list[bool]]:
        preds = [extract_answer(t, extract) for t in texts]
        return preds, [is_correct(grade(p, rows[i], checker)) for p in preds]

    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    items = []
    for i, (row, c) in enumerate(zip(rows, greedy)):
        text = prefixes[i] + c.text
        (pred,), (ok,) = score([text], i)
        items.append({"index": index_offset + i, "question": row["question"], "answer": golds[i], "completion": text,
                      "extracted": pred, "correct": float(ok), "length": c.policy_tokens,
                      "finish_reason": c.finish_reason, **({"tool_calls": c.tool_calls} if c.policy_mask is not None else {})})
    if n_samples > 0:
        _sample(items, engine, prompts, prefixes, score, n_samples, ks, checker,
                SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                               prompt_offset=index_offset))
    return EvalResult.from_items(items, n_samples, ks)


def _sample(items: list[dict], engine, prompts, prefixes, score, n: int, ks: list[int], checker: str,
            sampling: SamplingParams) -> None:
    """Draw n samples per problem and add each item's samples, pass@k and maj@k."""
    samples = engine.generate(prompts, n, sampling)

    def same(a: str, b: str) -> bool:  # two sampled answers vote together when the checker equates them
        return " ".join(a.split()) == " ".join(b.split()) or check_answer(a, b, checker)

    for i, item in enumerate(items):
        texts = [prefixes[i] + c.text for c in samples[i * n:(i + 1) * n]]
        preds, oks = score(texts, i)
        item["sampled_completions"], item["sampled_answers"] = texts, preds
        item["sampled_correct"] = [float(ok) for ok in oks]
        item["pass@k"] = {k: pass_at_k(n, sum(oks), k) for k in ks}
        item["maj@k"] = {k: maj_at_k(preds, oks, k, same) for k in ks}


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


def evaluate_across(acc, engine, tokenizer, rows: list[dict], **kwargs) -> EvalResult:
    """`evaluate` once per run with several processes (`acc`, an Accelerator or None): each process scores
    its share of the problems, then the items are gathered. Every process generates the same number of
    problems (a short share repeats its last one, dropped after), since sharded forwards are collective."""
    from r1kit import distributed as dist

    if acc is None or acc.num_processes == 1:
        return evaluate(engine, tokenizer, rows, **kwargs)
    share, per_rank = dist.padded_share(len(rows), acc)
    mine = [rows[i] for i in share] or rows[-1:]
    mine += mine[-1:] * (per_rank - len(mine))
    result = evaluate(engine, tokenizer, mine, index_offset=share.start, **kwargs)
    items = dist.gather_lists(acc, result.items[:len(share)])
    return EvalResult.from_items(items, result.n_samples, list(result.pass_at))
