"""Policy objectives: how a token's loss is made from its ratio r = pi/pi_old, logprob and advantage A.

Registered by name (`@register_objective`); a `loss_type` preset names the one it uses
(r1kit.presets). Every objective maps ratio (N, T), logprobs (N, T), advantages (N,) and the knobs to
a per-token loss (N, T) and a bool (N, T) of tokens it clipped (and one of those the dual clip capped).

    clip   -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)         PPO / GRPO / DAPO / GSPO
    cispo  -sg(min(r, 1+eps_high)) * A * log pi                MiniMax-M1 (arXiv:2506.13585)
    sapo   -(4/tau) * sigmoid(tau*(r-1)) * A                   SAPO, Qwen (arXiv:2511.20347)

With one update per batch r = 1 (and detached), and all three give the same gradient, -A * grad log pi:
they differ only once the policy has moved from the one that produced old_logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class ObjectiveKnobs:
    epsilon: float = 0.2  # clip: ratio >= 1 - epsilon (cispo: no lower bound, as MiniMax-M1)
    epsilon_high: float = 0.2  # clip: ratio <= 1 + epsilon_high; cispo: the weight's cap is 1 + epsilon_high
    dual_clip: float = 0.0  # clip only: c > 1 caps the loss of A < 0 tokens at -c*A
    sapo_temperature_pos: float = 1.0  # sapo: tau for A > 0
    sapo_temperature_neg: float = 1.05  # sapo: tau for A <= 0 (larger: the gate closes faster)


Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ObjectiveKnobs],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
    """Decorator: add an objective under `name`; a second one of the same name is an error."""
    def add(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"policy objective {name!r} is already registered ({OBJECTIVES[name].__qualname__})")
        OBJECTIVES[name] = fn
        return fn
    return add


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown policy objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float,
                      dual_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ratio (N, T), advantages (N,) -> per-token loss (N, T), clipped (N, T) bool, dual-clipped (N, T) bool.

    loss = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A). Where the clipped branch is the smaller
    objective the loss is constant in r, so the gradient stops: r > 1+eps_high with A > 0, or
    r < 1-eps_low with A < 0. Dual clip (c > 1) additionally caps the loss of A < 0 tokens at -c*A,
    which stops the gradient where r > c.
    """
    adv = advantages.unsqueeze(-1)  # (N, 1)
    unclipped = ratio * adv
    clipped_obj = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(unclipped, clipped_obj)
    was_clipped = clipped_obj < unclipped
    was_dual = torch.zeros_like(was_clipped)
    if dual_clip:
        cap = -dual_clip * adv  # (N, 1), > 0 where A < 0
        was_dual = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.min(loss, cap), loss)
    return loss, was_clipped, was_dual


@register_objective("clip")
def clip_objective(ratio, logprobs, advantages, knobs: ObjectiveKnobs):
    """PPO's clipped surrogate as GRPO uses it (Shao et al. 2024), with DAPO's clip-higher and the dual clip."""
    return clipped_surrogate(ratio, advantages, knobs.epsilon, knobs.epsilon_high, knobs.dual_clip)


@register_objective("cispo")
def cispo_objective(ratio, logprobs, advantages, knobs: ObjectiveKnobs):
    """CISPO (MiniMax-M1, arXiv:2506.13585): REINFORCE weighted by the clipped importance ratio,
    -sg(min(r, 1 + eps_high)) * A * log pi. Unlike PPO's clip, no token loses its gradient: a token
    whose ratio passed the cap keeps the capped weight. Clipped (N, T) marks the tokens whose weight
    was capped. The paper states no lower bound is used, so epsilon is ignored. Deviation from TRL
    (loss_type="cispo"), which caps at epsilon_high itself: here the cap is 1 + epsilon_high, as for
    every other r1kit objective (TRL's/ScaleRL's epsilon_high=5.0 is r1kit's epsilon_high=4.0).
    """
    cap = 1 + knobs.epsilon_high
    weight = ratio.detach().clamp(max=cap)  # (N, T), no gradient through the weight
    loss = -weight * advantages.unsqueeze(-1) * logprobs
    return loss, ratio.detach() > cap, torch.zeros_like(loss, dtype=torch.bool)


@register_objective("sapo")
def sapo_objective(ratio, logprobs, advantages, knobs: ObjectiveKnobs):
    """SAPO (Gao et al. 2025, Soft Adaptive Policy Optimization, arXiv:2511.20347): a smooth gate
    f(r) = (4/tau) * sigmoid(tau * (r - 1)) replaces the clip; loss = -f(r) * A, tau = tau_pos for
    A > 0 and tau_neg otherwise. Its gradient weight 4*s*(1-s) (s = sigmoid(tau*(r-1))) is 1 at r = 1
    and decays smoothly as r leaves 1, faster for larger tau; nothing is hard-clipped, so the clipped
    tensor is all False. As in the paper and TRL (loss_type="sapo").
    """
    adv = advantages.unsqueeze(-1)  # (N, 1)
    tau = torch.where(adv > 0, knobs.sapo_temperature_pos, knobs.sapo_temperature_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    loss = -gate * adv
    none = torch.zeros_like(loss, dtype=torch.bool)
    return loss, none, none
