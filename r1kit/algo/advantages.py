"""Group-relative advantages.

Completions are laid out grouped by prompt: rows [g*G, (g+1)*G) of a (B*G,) tensor are the G
samples of prompt g. The advantage of a sample is its reward minus its group's mean, optionally
divided by the group's standard deviation (GRPO, DeepSeekMath eq. 3).
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-4  # keeps the division finite for zero-variance groups (whose numerators are 0 anyway)


def group_stats(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group mean and (unbiased) group std.

    rewards: (B*G,) -> (mean (B*G,), std (B*G,)), each value repeated over its group.
    """
    grouped = rewards.view(-1, group_size)  # (B, G)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    std = grouped.std(dim=1).repeat_interleave(group_size)
    return mean, std


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """rewards (B*G,) -> advantages (B*G,).

    scale="group": (r - mean_g) / (std_g + eps)   -- GRPO
    scale="none":  r - mean_g                      -- Dr.GRPO drops the std (it up-weights easy/hard groups)
    Under either, the advantages of each group sum to zero.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    mean, std = group_stats(rewards, group_size)
    centred = rewards - mean
    if scale == "group":
        return centred / (std + ADVANTAGE_EPS)
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scale {scale!r}; expected 'group' or 'none'")


def zero_variance_groups(rewards: torch.Tensor, group_size: int, threshold: float = 0.0) -> torch.Tensor:
    """(B*G,) -> (B,) bool: groups whose reward std is <= threshold carry no learning signal."""
    return rewards.view(-1, group_size).std(dim=1) <= threshold
