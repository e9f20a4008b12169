"""The clipped policy-gradient loss, KL penalty and loss aggregation: tensors in, tensors out.

Vocabulary: N completions, T completion tokens; `mask` is 1 on real completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[index] without materialising the full (N, T, V) log-probabilities.

    logits (N, T, V), index (N, T) -> (N, T) in float32. Row by row to bound memory on large vocabularies.
    """
    out = []
    for row_logits, row_index in zip(logits, index):  # (T, V), (T,)
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(out)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - lp) - (ref - lp) - 1 >= 0. (N, T) -> (N, T)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, T) per-token values -> scalar.

    seq_mean_token_mean: mean over each sequence's tokens, then over sequences (GRPO paper): every
        sequence weighs the same, so tokens of long completions weigh less (a length bias).
    token_mean: mean over all tokens of the batch (DAPO): every token weighs the same.
    """
    mask = mask.to(values.dtype)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.mean()
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected 'seq_mean_token_mean' or 'token_mean'")


@dataclass
class LossStats:
    clip_fraction: float  # share of tokens whose ratio was clipped (the gradient stopped there)
    kl: float  # mean per-token KL estimate to the reference (0 without a reference)
    ratio_mean: float


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                epsilon: float = 0.2, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None,
                agg: str = "seq_mean_token_mean") -> tuple[torch.Tensor, LossStats]:
    """GRPO's clipped surrogate with an optional KL penalty.

    logprobs, old_logprobs, mask, ref_logprobs: (N, T); advantages: (N,).
    per-token loss = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A) + beta * k3(logprobs, ref)
    With a single update per batch, old_logprobs = logprobs.detach(): the ratio is 1, nothing is
    clipped, and the gradient is exactly the policy gradient A * grad(logprobs).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    adv = advantages.unsqueeze(-1)  # (N, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv
    per_token = -torch.min(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, agg)
    with torch.no_grad():
        m = mask.bool()
        was_clipped = (clipped < unclipped)[m].float()  # min() picked the clipped branch
        stats = LossStats(clip_fraction=was_clipped.mean().item() if m.any() else 0.0,
                          kl=kl[m].mean().item() if m.any() else 0.0,
                          ratio_mean=ratio[m].mean().item() if m.any() else 1.0)
    return loss, stats
