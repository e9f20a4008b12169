"""One step's rollouts as padded tensors, and the policy forward that scores them.

N = B*G completions, P = prompt width (left-padded), C = completion width (right-padded).

A multi-turn completion (r1kit.rollout.multiturn) holds tokens r1kit inserted (tool results) between the
policy's own: the forward attends to every real token (completion_attention), while completion_mask marks
the policy's tokens only, so inserted tokens are never scored, trained on or counted in lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kit.algo.loss import logprobs_and_entropy
from r1kit.forward import make_layout, packs_sequences, score_completions, shares_prompts
from r1kit.rollout.hf import left_pad
from r1kit.types import Completion

# The training forward packs sequences without padding (r1kit.forward.packed_layout) for models that
# transformers itself implements: their masks come from masking_utils, which reads restarting position
# ids as separate sequences (tests/test_forward.py: packed = padded to 1e-5, values and gradients).
# Measured ~1.4x faster per update (benchmarks/packing.py). Remote-code models keep the padded layout:
# nothing guarantees their attention separates packed sequences. Every layout gives the same result.
PACK_SEQUENCES = True
# Where the model allows it (r1kit.forward.shares_prompts: sdpa or eager attention, no sliding window),
# the G completions of a group share one copy of their prompt in the training forward
# (r1kit.forward.shared_prefix_layout): the prompt's tokens are computed once, not G times.
SHARE_PROMPTS = True


@dataclass
class Normaliser:
    """The loss normaliser's counts for one optimizer step, over every process together."""

    rows: int  # completions in the loss
    tokens: int  # their completion tokens
    micro_batches: int  # micro-batches that carry rows
    processes: int = 1


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # (N, P) left-padded, each prompt repeated G times
    prompt_mask: torch.Tensor  # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (N, C) right-padded
    completion_mask: torch.Tensor  # (N, C) 1 on the policy's own completion tokens (EOS included)
    engine_logprobs: torch.Tensor  # (N, C) the engine's logprob of each sampled token, 0 on padding
    advantages: torch.Tensor  # (N,)
    truncated: torch.Tensor  # (N,) bool: cut at max_completion_length without EOS
    # (N, C) 1 on every real completion token, sampled or inserted; None: the same as completion_mask
    completion_attention: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def _map(self, fn) -> "RolloutBatch":
        return RolloutBatch(*(None if getattr(self, f) is None else fn(getattr(self, f)) for f in self.__dataclass_fields__))

    def slice(self, start: int, end: int) -> "RolloutBatch":
        return self._map(lambda t: t[start:end])

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        """The completions at `rows` (N',) indices."""
        return self._map(lambda t: t[rows])

    def to(self, device) -> "RolloutBatch":
        return self._map(lambda t: t.to(device))

    @property
    def real_tokens(self) -> torch.Tensor:
        """(N, C) 1 on every real completion token: what the forward attends to."""
        return self.completion_mask if self.completion_attention is None else self.completion_attention

    def weight(self, agg: str, norm: "Normaliser") -> float:
        """This micro-batch's share of the step's loss, so the accumulated gradient equals the whole
        batch's. Strategies average gradients over processes, hence the factor `norm.processes`."""
        if agg == "token_mean":  # every token of the step weighs the same
            share = self.completion_mask.sum().item() / max(norm.tokens, 1)
        elif agg == "local_token_mean":  # (bnpo) each micro-batch's token mean, averaged over micro-batches
            share = 1.0 / max(norm.micro_batches, 1)
        else:  # per-sequence aggregations: each sequence weighs 1/N
            share = len(self) / max(norm.rows, 1)
        return share * norm.processes

    def logprob_gap(self, trainer_logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> dict:
        """Sampler-vs-trainer statistics over real tokens, as sums, maxima and a token count (for batch
        mean/max): |engine - trainer| logprobs, and the importance ratio pi_old / pi_engine."""
        m = self.completion_mask.bool().to(trainer_logprobs.device)
        engine = self.engine_logprobs.to(trainer_logprobs.device)
        gap = (engine - trainer_logprobs).abs()[m]
        ratio = torch.exp(old_logprobs.to(engine.device) - engine)[m]
        empty = not gap.numel()
        return {"sum": gap.sum().item(), "max": 0.0 if empty else gap.max().item(), "tokens": gap.numel(),
                "ratio_sum": ratio.sum().item(), "ratio_max": 0.0 if empty else ratio.max().item(),
                "ratio_min": float("inf") if empty else ratio.min().item()}

    def length_metrics(self) -> dict:
        lengths = self.completion_mask.sum(-1).float()
        return {"completion/mean_length": lengths.mean().item(), "completion/max_length": lengths.max().item(),
                "completion/truncated_fraction": self.truncated.float().mean().item()}


def make_batch(completions: list[Completion], rows: list[dict], advantages: torch.Tensor, pad_id: int) -> RolloutBatch:
    """Pad prompts (left) and completions (right) into a RolloutBatch; rows[i]["prompt_ids"] is prompt i."""
    prompt_ids, prompt_mask = left_pad([rows[c.prompt_index]["prompt_ids"] for c in completions], pad_id)
    width = max(max(len(c.token_ids) for c in completions), 1)
    n = len(completions)
    completion_ids = torch.full((n, width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    engine_logprobs = torch.zeros((n, width), dtype=torch.float32)
    for i, c in enumerate(completions):
        k = len(c.token_ids)
        completion_ids[i, :k] = torch.tensor(c.token_ids, dtype=torch.long)
        attention[i, :k] = 1
        completion_mask[i, :k] = 1 if c.policy_mask is None else torch.tensor(c.policy_mask, dtype=torch.long)
        if c.logprobs:
            engine_logprobs[i, :k] = torch.tensor(c.logprobs, dtype=torch.float32)
    truncated = torch.tensor([c.finish_reason == "length" for c in completions])
    inserted = any(c.policy_mask is not None for c in completions)
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, engine_logprobs,
                        advantages.float(), truncated, attention if inserted else None)


def completion_logprobs(model, batch: RolloutBatch, temperature: float = 1.0,
                        micro_batch_size: int | None = None) -> torch.Tensor:
    """log p(completion token | prefix) under `model` at `temperature`: (N, C), float32.

    Position ids count real tokens only (left padding does not shift them), as `generate` does,
    so the result matches the engine's sampled-token logprobs for the same weights. No full logits
    are made: the scored positions go through the output head in chunks (r1kit.forward).
    """
    if micro_batch_size is not None and micro_batch_size < len(batch):
        return torch.cat([completion_logprobs(model, batch.slice(s, s + micro_batch_size), temperature)
                          for s in range(0, len(batch), micro_batch_size)])
    return completion_logprobs_and_entropy(model, batch, temperature, with_entropy=False)[0]


def completion_logprobs_and_entropy(model, batch: RolloutBatch, temperature: float = 1.0, with_entropy: bool = True,
                                    entropy_grad: bool = False, layout: str | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) logprobs of the completion tokens and (N, C) entropy of the temperature-scaled next-token
    distribution at each completion position (None unless with_entropy; detached unless entropy_grad),
    0 on padding. Computed from hidden states through the output head in chunks (r1kit.forward): no
    (N, C, V) logits in forward or backward. `layout` is "padded", "packed" or "shared" (None: the
    fastest the model allows, see forward_layout)."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    made = make_layout(layout or forward_layout(model), model, batch.prompt_ids, batch.prompt_mask,
                       batch.completion_ids, batch.real_tokens)
    return score_completions(model, made, batch.completion_mask, temperature, with_entropy, entropy_grad)


def forward_layout(model) -> str:
    """The layout the training forward uses for `model`: shared prompts, else packed, else padded."""
    if SHARE_PROMPTS and shares_prompts(model):
        return "shared"
    return "packed" if PACK_SEQUENCES and packs_sequences(model) else "padded"


def full_logits_logprobs_and_entropy(model, batch: RolloutBatch, temperature: float = 1.0, with_entropy: bool = True,
                                     entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same (N, C) logprobs and entropy from the model's full (N, C+1, V) logits (padded layout):
    what r1kit did before the chunked path. Kept as the reference the chunked path is tested against and
    the "before" of benchmarks/update_memory.py; the trainer does not use it."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)  # (N, P+C)
    attention_mask = torch.cat([batch.prompt_mask, batch.real_tokens], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    C = batch.completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=C + 1).logits  # (N, C+1, V)
    logits = logits[:, :-1, :] / temperature  # position t predicts completion token t
    logprobs, entropy = logprobs_and_entropy(logits, batch.completion_ids, with_entropy, entropy_grad)
    mask = batch.completion_mask.bool()  # scored: the policy's own tokens
    return torch.where(mask, logprobs, 0.0), None if entropy is None else torch.where(mask, entropy, 0.0)
