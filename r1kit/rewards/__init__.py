"""Rewards: plain or async functions called as TRL calls them, ``fn(prompts=..., completions=..., **columns)
-> list[float | None]``, chosen by name.

Importing this package registers the built-in rewards: it imports the catalog and the shaping rewards,
which register themselves with the registry (the registry imports neither). No torch, no model.
"""

from r1kit.rewards import catalog, shaping  # noqa: F401  (registers the built-in rewards)
from r1kit.rewards.catalog import accuracy_reward, completion_text, format_reward, gold_answer
from r1kit.rewards.contract import RewardState, call_rewards, reward_inputs
from r1kit.rewards.errors import UnknownRewardError
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
    "call_rewards",
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
