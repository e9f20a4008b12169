"""Evaluation metrics as pure functions: pass@k (unbiased) and maj@k (majority vote).

pass@k is the chance that at least one of k completions drawn without replacement from n
samples, c of them correct, is correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, the
estimator R1 and Codex report). It is unbiased for every k <= n, unlike "correct among the
first k", and for k = 1 it is c / n, the sampled pass@1.

maj@k (self-consistency) takes the first k samples' extracted answers, groups equivalent ones,
and is right when the largest group's answer is right. Samples without an answer do not vote; a
tie goes to the answer that appeared first (so the result is deterministic given the samples).
"""

from __future__ import annotations

from math import comb
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct (needs 1 <= k <= n)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool] | None = None) -> int | None:
    """Index of the first sample of the most common answer, or None when no sample has an answer.

    ``same(a, b)`` says whether two answers are equivalent (default: equal after whitespace
    normalisation); each answer joins the first earlier group it matches.
    """
    same = same or (lambda a, b: " ".join(a.split()) == " ".join(b.split()))
    groups: list[list[int]] = []  # each: indices of equivalent answers, in order of first appearance
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if same(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)  # max keeps the first of equally large groups
    return best[0]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int,
             same: Callable[[str, str], bool] | None = None) -> bool:
    """Whether the majority answer among the first k samples is correct (``correct[i]`` per sample)."""
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)} samples, got k={k}")
    winner = majority_vote(answers[:k], same)
    return winner is not None and bool(correct[winner])


def default_ks(n: int) -> list[int]:
    """The k values reported for n samples: powers of two up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks + ([n] if n and ks[-1] != n else [])
