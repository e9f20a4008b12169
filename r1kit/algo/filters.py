"""Which completions enter the loss: boolean keep-masks over the (B*G,) grouped layout.

A dropped completion gets no forward/backward pass and is not counted in the loss normaliser
(the trainer removes it from the batch). Rewards and advantages are computed before filtering,
over every sampled completion, so filtering never changes the surviving advantages.
"""

from __future__ import annotations

import torch

from r1kit.algo.advantages import zero_variance_groups


def informative_groups(rewards: torch.Tensor, group_size: int, min_std: float | None) -> torch.Tensor:
    """(B*G,) -> (B,) bool: groups whose reward std is above `min_std` (None or 0: above zero).

    DAPO's dynamic sampling keeps exactly these; ReasonLLM's tip is min_std = 0.1.
    """
    return ~zero_variance_groups(rewards, group_size, min_std or 0.0)


def keep_groups(rewards: torch.Tensor, group_size: int, min_std: float | None) -> torch.Tensor:
    """(B*G,) -> (B*G,) bool: False for every member of a group with reward std <= min_std; all True if None."""
    if min_std is None:
        return torch.ones_like(rewards, dtype=torch.bool)
    return informative_groups(rewards, group_size, min_std).repeat_interleave(group_size)


def keep_rows(rewards: torch.Tensor, advantages: torch.Tensor, truncated: torch.Tensor, group_size: int, *,
              min_group_std: float | None = None, drop_negative_advantages: bool = False,
              mask_truncated: bool = False) -> torch.Tensor:
    """All filters together: (B*G,) rewards, advantages, truncated -> (B*G,) bool keep-mask."""
    keep = keep_groups(rewards, group_size, min_group_std)
    if drop_negative_advantages:
        keep &= advantages >= 0
    if mask_truncated:
        keep &= ~truncated.bool()
    return keep
