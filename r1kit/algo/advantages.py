"""Advantage estimators: rewards of grouped completions -> one advantage per completion.

Completions are laid out grouped by prompt: rows [g*G, (g+1)*G) of a (B*G,) tensor are the G
samples of prompt g. An estimator subtracts a baseline; `scale` then divides by a spread:

    estimator  grpo: baseline = the group mean                          (DeepSeekMath eq. 3)
               rloo: baseline = the mean of the OTHER G-1 rewards       (Ahmadian et al. 2024, RLOO)
    scale      group: / (std of the group's rewards + eps)              (GRPO)
               batch: / (std of all B*G rewards + eps)                  (Liu et al. 2025 "Tricks or Traps": group
                                                                          mean, batch std; TRL scale_rewards=batch)
               none:  no division                                       (Dr. GRPO; RLOO as published)
Under every combination the advantages of each group sum to zero, so a group whose rewards are
all equal (zero variance) gets zero advantages and contributes no policy gradient.
"""

from __future__ import annotations

from typing import Callable

import torch

ADVANTAGE_EPS = 1e-4  # keeps the division finite for zero-variance groups (whose numerators are 0 anyway)


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)  # (B, G)


def group_mean_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B*G,) -> r - mean of its group (B*G,)."""
    grouped = _grouped(rewards, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).flatten()


def leave_one_out_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B*G,) -> r_i - mean_{j != i} r_j (B*G,).

    Algebra: mean_{j != i} r_j = (G*mean - r_i) / (G-1), so r_i - that = G/(G-1) * (r_i - mean):
    RLOO is GRPO's centring scaled by G/(G-1) (an unbiased baseline, since it excludes r_i).
    """
    if group_size < 2:
        raise ValueError("the leave-one-out baseline needs groups of at least 2")
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).flatten()


ESTIMATORS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "grpo": group_mean_baseline,
    "rloo": leave_one_out_baseline,
}


def reward_scale(rewards: torch.Tensor, group_size: int, scale: str) -> torch.Tensor:
    """The divisor for each completion's centred reward: (B*G,). Stds are unbiased (torch.std)."""
    grouped = _grouped(rewards, group_size)
    if scale == "group":
        return grouped.std(dim=1).repeat_interleave(group_size) + ADVANTAGE_EPS
    if scale == "batch":
        return rewards.std().expand_as(rewards) + ADVANTAGE_EPS
    if scale == "none":
        return torch.ones_like(rewards)
    raise ValueError(f"unknown reward scale {scale!r}; expected 'group', 'batch' or 'none'")


def compute_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "grpo",
                       scale: str = "group") -> torch.Tensor:
    """rewards (B*G,) -> advantages (B*G,): (r - baseline) / scale."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[estimator](rewards, group_size) / reward_scale(rewards, group_size, scale)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO's advantages: (r - mean_g) / (std_g + eps) with scale="group", r - mean_g with "none". (B*G,)."""
    return compute_advantages(rewards, group_size, "grpo", scale)


def group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B*G,) -> (B,) unbiased std of each group's rewards."""
    return _grouped(rewards, group_size).std(dim=1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int, threshold: float = 0.0) -> torch.Tensor:
    """(B*G,) -> (B,) bool: groups whose reward std is <= threshold carry no (or too little) learning signal."""
    return group_std(rewards, group_size) <= threshold
