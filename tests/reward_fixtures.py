"""User-style reward functions for the trainer tests (imported by dotted path, like a user's own).

The tiny world's prompts are conversational, so, as in TRL, each completion arrives as
``[{"role": "assistant", "content": text}]``; these read it the way open-r1's rewards do.
"""

CALLS = {"n": 0}


def length_reward(completions, **kwargs):
    """Longer is better: varies across a random model's samples, so advantages are non-zero."""
    return [len(c[0]["content"]) / 10 for c in completions]


def fail_on_third_call(completions, **kwargs):
    """Works twice, then raises: simulates a crash in the middle of a run."""
    CALLS["n"] += 1
    if CALLS["n"] == 3:
        raise RuntimeError("simulated crash")
    return [len(c[0]["content"]) / 10 for c in completions]


def constant_reward(completions, **kwargs):
    """The same reward for everything: no group has any variance."""
    return [1.0 for _ in completions]


def fail_on_rank_one_at_step_two(completions, **kwargs):
    """Rank 1 of a multi-process run raises at its second call; the other ranks carry on (and must be stopped)."""
    import os

    CALLS["n"] += 1
    if os.environ.get("RANK") == "1" and CALLS["n"] == 2:
        raise RuntimeError("simulated failure on rank 1")
    return [len(c) / 10 for c in completions]


def huge_reward(completions, **kwargs):
    """1e38 per character: with scale_rewards=none the advantages overflow the loss (a non-finite gradient)."""
    return [1e38 * len(c) for c in completions]


def signal_then_zero(completions, trainer_state=None, **kwargs):
    """Step 1 rewards length (groups vary), every later step scores 0: a run whose learning signal is gone."""
    if trainer_state is not None and trainer_state.global_step == 0:
        return [len(c[0]["content"]) / 10 for c in completions]
    return [0.0 for _ in completions]
