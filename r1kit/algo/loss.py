"""The policy loss of the GRPO family, its pieces, KL estimators and aggregation modes.

Tensors in, tensors out, no model inside. Vocabulary: N completions, T completion tokens;
`mask` is 1 on real completion tokens. Per token, for advantage A and ratio r = pi/pi_old:

    pg    = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)          PPO/GRPO clipped surrogate
            (dual clip, A < 0: min(pg, -c*A) caps the loss)      Ye et al. 2020, used by verl
            or another registered objective (CISPO, SAPO: r1kit.algo.objectives)
    pg   *= w  (if given)                                         off-policy corrections (r1kit.algo.offpolicy):
                                                                  importance weights pi_old/pi_engine, masks
    loss  = aggregate(pg + beta*kl - entropy_coef*entropy)
The ratio is per token, or per sequence (GSPO): exp(mean_t log r_t), shared by all its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from r1kit.algo.objectives import ObjectiveKnobs, clipped_surrogate, get_objective  # noqa: F401 (re-exported)


# ---------------------------------------------------------------- log-probabilities and entropy


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[index] without materialising the full (N, T, V) log-probabilities.

    logits (N, T, V), index (N, T) -> (N, T) in float32. Row by row to bound memory on large vocabularies.
    """
    return logprobs_and_entropy(logits, index, with_entropy=False)[0]


def logprobs_and_entropy(logits: torch.Tensor, index: torch.Tensor, with_entropy: bool = True,
                         entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, T, V) logits, (N, T) index -> logprob of each index token (N, T), entropy of each position (N, T).

    entropy = logsumexp(z) - sum softmax(z) * z, in float32, row by row (one (T, V) float copy at a time).
    It is detached unless entropy_grad (an entropy bonus needs its gradient; logging does not, and a
    graph through the full softmax would cost (T, V) memory per row).
    """
    logps, entropies = [], []
    for row_logits, row_index in zip(logits, index):  # (T, V), (T,)
        row_logits = row_logits.float()
        lse = torch.logsumexp(row_logits, dim=-1)  # (T,)
        logps.append(row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1) - lse)
        if with_entropy:
            z, z_lse = (row_logits, lse) if entropy_grad else (row_logits.detach(), lse.detach())
            entropies.append(z_lse - (torch.softmax(z, dim=-1) * z).sum(-1))
    return torch.stack(logps), torch.stack(entropies) if with_entropy else None


# ---------------------------------------------------------------- KL estimators of KL(pi || ref), per token


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log ref: unbiased, high variance, can be negative. (N, T) -> (N, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log ref)^2 / 2: biased, low variance, >= 0. (N, T) -> (N, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - lp) - (ref - lp) - 1: unbiased, low variance, >= 0 (GRPO's choice). (N, T) -> (N, T)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ---------------------------------------------------------------- aggregation: (N, T) token values -> scalar


def seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (GRPO paper). Every sequence weighs the
    same, so each token of a long completion weighs less: the length bias Dr. GRPO points out."""
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def token_mean(values: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Mean over all real tokens of the batch (DAPO): every token weighs the same."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def seq_mean_token_sum_norm(values: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Token sums divided by the constant max_len, then the mean over sequences (Dr. GRPO)."""
    if not max_len:
        raise ValueError("seq_mean_token_sum_norm needs max_len (rollout.max_completion_length)")
    return ((values * mask).sum(-1) / max_len).mean()


def seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Token sums, then the mean over sequences: each sequence weighs by its length (LUSPO,
    arXiv:2602.05261, with sequence-level ratios; TRL's loss_type="luspo"). It is
    seq_mean_token_sum_norm times max_len."""
    return (values * mask).sum(-1).mean()


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
    "seq_mean_token_sum": seq_mean_token_sum,
    # TRL's "bnpo": a token mean over each micro-batch; the trainer averages micro-batches.
    "local_token_mean": token_mean,
}


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """(N, T) per-token values, (N, T) mask -> scalar, by the named mode (AGGREGATIONS)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode](values, mask.to(values.dtype), max_len)


# ---------------------------------------------------------------- ratios, clipping, importance weights


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
                     level: str = "token") -> torch.Tensor:
    """pi/pi_old per token (N, T); level="sequence" (GSPO): exp(mean over the sequence's tokens of
    log pi - log pi_old), the same value (with its gradient) at every token of the sequence."""
    log_ratio = logprobs - old_logprobs  # (N, T)
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # (N, 1)
        return torch.exp(seq).expand_as(log_ratio)
    raise ValueError(f"unknown importance_sampling_level {level!r}; expected 'token' or 'sequence'")


def truncated_is_weights(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "off-policy RL from a mismatched sampler"):
    min(pi_old / pi_engine, cap) per token, detached. (N, T) -> (N, T)."""
    return torch.exp(old_logprobs.detach() - engine_logprobs).clamp(max=cap)


# ---------------------------------------------------------------- the loss


@dataclass
class LossStats:
    clip_fraction: float  # share of tokens whose ratio was clipped (the gradient stopped there)
    dual_clip_fraction: float  # share of tokens capped by the dual clip
    kl: float  # mean per-token KL estimate to the reference (0 without a reference)
    ratio_mean: float  # mean pi/pi_old over real tokens (1 with num_iterations = 1)
    entropy: float  # mean token entropy of pi (nan if not computed)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                epsilon: float = 0.2, epsilon_high: float | None = None, dual_clip: float = 0.0,
                level: str = "token", agg: str = "seq_mean_token_mean", max_len: int | None = None,
                beta: float = 0.0, ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k3",
                is_weights: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                entropy_coef: float = 0.0, objective: str = "clip",
                sapo_temperatures: tuple[float, float] = (1.0, 1.05)) -> tuple[torch.Tensor, LossStats]:
    """The GRPO-family loss (module docstring). logprobs, old_logprobs, mask, ref_logprobs, is_weights,
    entropy: (N, T); advantages: (N,). Returns the scalar loss and detached statistics.

    objective names the per-token policy loss (r1kit.algo.objectives.OBJECTIVES); is_weights (detached)
    multiplies it, the KL and entropy terms are added after.

    With one update per batch, old_logprobs = logprobs.detach(): the ratio is 1, nothing is clipped,
    and the gradient is exactly the policy gradient A * grad(logprobs), aggregated by `agg`.
    """
    ratio = importance_ratio(logprobs, old_logprobs, mask, level)
    knobs = ObjectiveKnobs(epsilon, epsilon if epsilon_high is None else epsilon_high, dual_clip, *sapo_temperatures)
    per_token, was_clipped, was_dual = get_objective(objective)(ratio, logprobs, advantages, knobs)
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = torch.zeros_like(per_token)
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = KL_ESTIMATORS[kl_estimator](logprobs, ref_logprobs)
        per_token = per_token + beta * kl
    if entropy_coef > 0:
        if entropy is None or not entropy.requires_grad:
            raise ValueError("entropy_coef > 0 needs the entropy with its gradient")
        per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, mask, agg, max_len)
    with torch.no_grad():
        m = mask.bool()

        def masked_mean(x, empty):
            return x[m].float().mean().item() if m.any() else empty
        stats = LossStats(clip_fraction=masked_mean(was_clipped, 0.0), dual_clip_fraction=masked_mean(was_dual, 0.0),
                          kl=masked_mean(kl, 0.0), ratio_mean=masked_mean(ratio, 1.0),
                          entropy=masked_mean(entropy, float("nan")) if entropy is not None else float("nan"))
    return loss, stats
