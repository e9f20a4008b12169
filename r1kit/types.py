"""Shared record types. Shapes of tensors are in the comments (N = completions in a batch, T = tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SamplingParams:
    """How an Engine samples. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None  # seeds the engine's sampler for this call when set
    prompt_offset: int = 0  # index of this call's first prompt in the whole step (several processes share a step)

    def prompt_seed(self, i: int) -> int | None:
        """Prompt i's seed: a function of its index in the whole step, so a prompt samples the same
        completions whichever process or batch it lands in."""
        return None if self.seed is None else self.seed + self.prompt_offset + i


@dataclass
class Completion:
    """One sampled completion of one prompt, as an Engine returns it."""

    prompt_index: int  # which prompt of the generate() call this completes
    token_ids: list[int]  # sampled tokens, including the end-of-sequence token when it was sampled
    text: str  # decoded completion, special tokens removed
    finish_reason: Literal["stop", "length"]  # stop: EOS sampled; length: cut at max_new_tokens (truncated)
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the sampling distribution, per token
    policy_version: int = 0  # the weights that sampled it: the number of trainer steps they had applied
