"""Rewards: plain functions ``fn(completions, **columns) -> list[float | None]`` chosen by name.

Importing this package registers the built-in catalog. No torch, no model.
"""

from r1kit.rewards import catalog  # noqa: F401  (registers the built-in rewards)
from r1kit.rewards.catalog import accuracy_reward, completion_text, format_reward, gold_answer
from r1kit.rewards.contract import RewardState, reward_inputs
from r1kit.rewards.shaping import (
    cosine_length_reward,
    repetition_reward,
    soft_overlong_reward,
    tag_count_reward,
    think_tags_reward,
    unique_chars_reward,
)
from r1kit.rewards.registry import (
    RewardFn,
    RewardResult,
    UnknownRewardError,
    accepted_params,
    available_rewards,
    bind,
    build_rewards,
    combine,
    get_reward,
    register,
)

__all__ = [
    "RewardFn",
    "RewardResult",
    "RewardState",
    "UnknownRewardError",
    "accepted_params",
    "accuracy_reward",
    "available_rewards",
    "bind",
    "build_rewards",
    "combine",
    "completion_text",
    "cosine_length_reward",
    "format_reward",
    "get_reward",
    "gold_answer",
    "register",
    "repetition_reward",
    "reward_inputs",
    "soft_overlong_reward",
    "tag_count_reward",
    "think_tags_reward",
    "unique_chars_reward",
]
