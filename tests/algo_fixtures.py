"""Reward functions for the GRPO-family trainer tests (imported by dotted path, like a user's own)."""

import zlib


def half_the_prompts_informative(completions, prompts, **kwargs):
    """Prompts whose text hashes even get a constant reward (a zero-variance group); the others
    reward longer completions (their groups vary). Deterministic, so dynamic sampling is testable."""
    # conversational prompts, as TRL passes them: message lists in, [{"role": "assistant", ...}] out
    return [len(c[0]["content"]) / 10 if zlib.crc32(p[-1]["content"].encode()) % 2 else 1.0
            for c, p in zip(completions, prompts)]


def always_raises(completions, **kwargs):
    """A broken user reward."""
    raise RuntimeError("bug in my reward")
