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
    # one seed per prompt of the call, replacing seed + prompt_offset + i (multi-turn rollouts continue each
    # conversation with a seed of its own: r1kit.rollout.multiturn)
    prompt_seeds: list[int] | None = None

    def prompt_seed(self, i: int) -> int | None:
        """Prompt i's seed: a function of its index in the whole step, so a prompt samples the same
        completions whichever process or batch it lands in."""
        if self.prompt_seeds is not None:
            return self.prompt_seeds[i]
        return None if self.seed is None else self.seed + self.prompt_offset + i


@dataclass
class Completion:
    """One sampled completion of one prompt, as an Engine returns it."""

    prompt_index: int  # which prompt of the generate() call this completes
    token_ids: list[int]  # sampled tokens, including the end-of-sequence token when it was sampled
    text: str  # decoded completion, special tokens removed
    finish_reason: Literal["stop", "length"]  # stop: EOS sampled; length: cut at max_new_tokens (truncated)
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the sampling distribution, per token
    # multi-turn rollouts (r1kit.rollout.multiturn): 1 where the policy sampled the token, 0 where r1kit inserted
    # it (a tool result; its logprobs entry is 0.0). None: every token was sampled by the policy
    policy_mask: list[int] | None = None
    turns: int = 1  # assistant turns the policy wrote
    tool_calls: int = 0  # tool calls it made (parsed or not)
    tool_errors: int = 0  # of which failed: malformed, unknown tool, bad arguments, the tool raised or timed out

    @property
    def policy_tokens(self) -> int:
        """How many of the tokens the policy sampled (all of them, unless r1kit inserted some)."""
        return len(self.token_ids) if self.policy_mask is None else sum(self.policy_mask)
