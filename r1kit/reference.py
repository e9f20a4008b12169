"""The reference policy for the KL term: whatever returns per-token logprobs of a batch.

The trainer asks one question of it, ``reference.logprobs(batch) -> (N, C)``, so the same loop
runs with a frozen in-process copy of the start model (below) or a remote reference server.
No reference exists at all when ``algo.beta == 0``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from r1kit.batch import RolloutBatch, completion_logprobs


class Reference(Protocol):
    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """log p_ref(completion token | prefix): (N, C) float32 on the CPU, 0 where masked."""


class LocalReference:
    """A frozen copy of the start model in the training process."""

    def __init__(self, model: torch.nn.Module, temperature: float, micro_batch_size: int):
        self.model = model.requires_grad_(False).eval()
        self.temperature = temperature
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        out = completion_logprobs(self.model, batch, self.temperature, self.micro_batch_size)
        return out.float().cpu() * batch.completion_mask.to(out.device).cpu()
