"""Shared record types. Shapes of tensors are in the comments (N = completions in a batch, T = tokens)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

# The smallest positive sampling temperature: logits / T overflows float32 for T near 1e-38 (a 1e-300 temperature
# made NaN), and below 1e-2 vLLM clamps it anyway; 0 means greedy where a command allows it.
MIN_TEMPERATURE = 1e-2


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


def sampling_problems(names: dict[str, str], temperature: float, top_p: float, top_k: int = 0,
                      max_new_tokens: int | None = 1, greedy_allowed: bool = False) -> list[str]:
    """Every out-of-range sampling argument, as one message each naming it as `names` says (a flag or a config
    key: {"temperature": "--temperature", ...}). The one check eval, chat, generate and train share."""
    def number(x) -> bool:  # a real, finite number (a YAML true is a bool, not a number)
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    floor = "0 (greedy) or " if greedy_allowed else ""
    checks = [
        (number(temperature) and (temperature >= MIN_TEMPERATURE or (greedy_allowed and temperature == 0)),
         f"{names['temperature']} must be {floor}a finite number >= {MIN_TEMPERATURE}, got {temperature!r}"),
        (number(top_p) and 0 < top_p <= 1, f"{names['top_p']} must be in (0, 1], got {top_p!r}"),
        (isinstance(top_k, int) and top_k >= 0, f"{names.get('top_k', 'top_k')} must be >= 0 (0 disables it), got {top_k!r}"),
        (max_new_tokens is None or (isinstance(max_new_tokens, int) and max_new_tokens >= 1),
         f"{names.get('max_new_tokens', 'max_new_tokens')} must be >= 1, got {max_new_tokens!r}"),
    ]
    return [message for ok, message in checks if not ok]


FLAG_NAMES = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "max_new_tokens": "--max-new-tokens"}


def config_names(prefix: str) -> dict[str, str]:
    """`sampling_problems` names of a config section's keys: config_names("eval.") -> {"temperature": "eval.temperature", ...}."""
    return {key: prefix + key for key in ("temperature", "top_p", "top_k", "max_new_tokens")}


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
    policy_version: int = 0  # the weights that sampled it: the number of trainer steps they had applied

    @property
    def policy_tokens(self) -> int:
        """How many of the tokens the policy sampled (all of them, unless r1kit inserted some)."""
        return len(self.token_ids) if self.policy_mask is None else sum(self.policy_mask)
