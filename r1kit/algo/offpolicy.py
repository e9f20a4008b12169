"""Off-policy corrections: what to do with tokens the sampler drew from a policy other than the one trained.

Tensors in, tensors out, no model inside. N completions, T completion tokens, `mask` (N, T) is 1 on real
completion tokens. Three corrections, each a factor on the per-token policy loss (never on the KL term
or the entropy bonus), each detached (they scale the gradient, they carry none):

    importance weights   w = pi_old / pi_engine, per token or per sequence (the product over its tokens),
                         truncated to [C_min, C_max] or set to 0 outside it (masked)
                         Yao et al. 2025 (truncated IS); Liu et al. 2025 "When speed kills stability"
                         (sequence-level and masked IS); TRL's vllm_importance_sampling_mode
    off-policy mask      a sequence with advantage < 0 whose mean log(pi_engine / pi_theta) exceeds delta
                         gets 0 (DeepSeek-V3.2, arXiv:2512.02556, eq. 9; TRL's off_policy_mask_threshold)
    entropy mask         only tokens whose entropy is in the top-rho fraction of the batch's train
                         (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv:2506.01939; TRL's top_entropy_quantile)

A weight of 0 removes a token's policy gradient but not its place in the loss normaliser (the
aggregation's denominators are unchanged), as in TRL.
"""

from __future__ import annotations

from typing import Callable

import torch


# ---------------------------------------------------------------- importance weights pi_old / pi_engine


def token_log_ratio(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(pi_old / pi_engine) per token, 0 on padding, detached: (N, T) -> (N, T)."""
    return (old_logprobs.detach() - engine_logprobs) * mask


def sequence_log_ratio(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of the sequence's importance ratio, the product of its tokens' ratios: (N, T) -> (N, 1).

    A sum, not GSPO's length-normalised mean: this is the true ratio of the sequence's probabilities."""
    return token_log_ratio(old_logprobs, engine_logprobs, mask).sum(-1, keepdim=True)


def truncate(ratio: torch.Tensor, cap: float | None, floor: float | None) -> torch.Tensor:
    """clamp(ratio, floor, cap); None leaves that side open."""
    return ratio.clamp(min=floor, max=cap)


def mask_outside(ratio: torch.Tensor, cap: float | None, floor: float | None) -> torch.Tensor:
    """ratio where floor <= ratio <= cap, else 0; None leaves that side open."""
    outside = torch.zeros_like(ratio, dtype=torch.bool)
    if cap is not None:
        outside |= ratio > cap
    if floor is not None:
        outside |= ratio < floor
    return ratio.masked_fill(outside, 0.0)


IS_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_log_ratio, "sequence": sequence_log_ratio}
IS_BOUNDS: dict[str, Callable[[torch.Tensor, float | None, float | None], torch.Tensor]] = {
    "truncate": truncate, "mask": mask_outside}
IS_MODES = tuple(f"{level}_{bound}" for level in IS_LEVELS for bound in IS_BOUNDS)  # TRL's four names


def importance_weights(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                       mode: str = "token_truncate", cap: float | None = 2.0,
                       floor: float | None = None) -> torch.Tensor:
    """The importance weight of every token, detached: (N, T) logprobs and mask -> (N, T).

    mode is TRL's vllm_importance_sampling_mode: token_* weighs each token by its own ratio
    pi_old/pi_engine, sequence_* every token of a sequence by the product of their ratios; *_truncate
    clamps the ratio to [floor, cap], *_mask sets it to 0 outside. token_truncate with floor None is
    truncated_is_weights (r1kit.algo.loss) on every real token.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; expected one of {list(IS_MODES)}")
    level, bound = mode.split("_")
    ratio = torch.exp(IS_LEVELS[level](old_logprobs, engine_logprobs, mask))  # (N, T) or (N, 1)
    return IS_BOUNDS[bound](ratio, cap, floor).expand_as(old_logprobs)


# ---------------------------------------------------------------- DeepSeek-V3.2's off-policy sequence mask


def sequence_sampler_kl(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over a sequence's tokens of log(pi_engine / pi_theta), detached: (N, T) -> (N,).

    The per-sequence estimate of KL(pi_engine || pi_theta) on the engine's own samples that
    DeepSeek-V3.2 thresholds (0 for a sequence without tokens)."""
    mask = mask.to(logprobs.dtype)
    return ((engine_logprobs - logprobs.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def off_policy_sequence_mask(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, advantages: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool, True where a sequence is kept: its advantage is >= 0, or its sampler KL is <= threshold.

    logprobs, engine_logprobs, mask (N, T); advantages (N,). DeepSeek-V3.2 masks only negative
    samples that drifted: learning from one's own mistakes sampled by a different policy destabilises.
    """
    return (advantages >= 0) | (sequence_sampler_kl(logprobs, engine_logprobs, mask) <= threshold)


# ---------------------------------------------------------------- "Beyond the 80/20 Rule": high-entropy tokens


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of a 1-D tensor with linear interpolation (torch.quantile's default), by sorting,
    so it has no input-size limit (torch.quantile refuses more than 2^24 values). Empty -> +inf."""
    if not values.numel():
        return torch.tensor(float("inf"))
    ordered = values.float().sort().values
    position = q * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """(N, T) bool: real tokens whose entropy is >= threshold (the batch's (1 - rho)-quantile)."""
    return (entropy >= threshold) & mask.bool()


# ---------------------------------------------------------------- all of them, as the config asks


def corrections(algo, logprobs: torch.Tensor, old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor,
                high_entropy: torch.Tensor | None = None) -> tuple[torch.Tensor | None, dict]:
    """The product of the corrections `algo` (a resolved r1kit.config.AlgoCfg) turns on, and their statistics.

    logprobs (current, detached), old_logprobs, engine_logprobs, mask, high_entropy (bool, or None when
    top_entropy_quantile = 1): (N, T); advantages (N,). Returns weights (N, T) detached, or None when no
    correction is on (the loss is then exactly the uncorrected one), and {name: (numerator, denominator)}
    for means and fractions, {name: value} for names ending in _min or _max (merge_statistics).
    """
    weights, stats = None, {}
    real = mask.bool()
    tokens, sequences = real.sum().item(), mask.shape[0]

    def times(factor):
        return factor if weights is None else weights * factor

    if algo.is_correction:
        w = importance_weights(old_logprobs, engine_logprobs, mask, algo.is_mode, algo.is_cap, algo.is_min)
        zero = (w == 0) & real  # (N, T) tokens the mask modes (or an underflowing ratio) removed
        all_zero = (zero.sum(-1) == real.sum(-1)) & real.any(-1)  # (N,) sequences left without a token
        stats |= {"is/masked_token_fraction": (zero.sum().item(), tokens),
                  "is/masked_sequence_fraction": (all_zero.sum().item(), sequences)}
        if algo.is_mode.startswith("sequence"):
            seq = torch.exp(sequence_log_ratio(old_logprobs, engine_logprobs, mask)).squeeze(-1)  # (N,)
            stats |= {"is/seq_ratio_mean": (seq.sum().item(), sequences),
                      "is/seq_ratio_min": seq.min().item(), "is/seq_ratio_max": seq.max().item()}
        weights = times(w)
    if algo.off_policy_mask_threshold is not None:
        keep = off_policy_sequence_mask(logprobs, engine_logprobs, advantages, mask, algo.off_policy_mask_threshold)
        kl = sequence_sampler_kl(logprobs, engine_logprobs, mask)  # (N,)
        stats |= {"opsm/masked_sequence_fraction": ((~keep).sum().item(), sequences),
                  "opsm/kl_mean": (kl.sum().item(), sequences), "opsm/kl_max": kl.max().item()}
        weights = times(keep.unsqueeze(-1).to(logprobs.dtype).expand_as(logprobs))
    if high_entropy is not None:
        stats["entropy_mask/kept_token_fraction"] = ((high_entropy & real).sum().item(), tokens)
        weights = times(high_entropy.to(logprobs.dtype))
    return weights, stats


def merge_statistics(parts: list[dict]) -> dict:
    """Per-micro-batch statistics of `corrections` -> one value each: pooled means, min of *_min, max of *_max."""
    out = {}
    for name in dict.fromkeys(k for p in parts for k in p):
        values = [p[name] for p in parts if name in p]
        if name.endswith("_max"):
            out[name] = max(values)
        elif name.endswith("_min"):
            out[name] = min(values)
        else:
            denominator = sum(d for _, d in values)
            out[name] = sum(n for n, _ in values) / denominator if denominator else float("nan")
    return out
