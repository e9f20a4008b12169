"""The reference policy for the KL term: whatever returns per-token logprobs of a batch.

The trainer asks one question of it, ``reference.logprobs(batch) -> (N, C)``, so the same loop
runs with a frozen in-process copy of the start model (below) or a remote reference server.
No reference exists at all when ``algo.beta == 0``.
The remote one (``services.reference_url``) talks to ``r1kit serve-ref`` (r1kit/serve/reference.py).
"""

from __future__ import annotations

from typing import Protocol

import torch

from r1kit.batch import RolloutBatch, completion_logprobs
from r1kit.rollout.http import ServiceError


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
        return out.float().cpu() * batch.completion_mask.cpu()


class AdapterDisabledReference(LocalReference):
    """LoRA training: the policy itself with its adapters switched off is the start model, so no
    second copy is loaded (peft's `disable_adapter()`; the base weights never change)."""

    def __init__(self, policy: torch.nn.Module, temperature: float, micro_batch_size: int):
        # no super().__init__: the policy must stay trainable; only its adapters are switched off here
        self.model = getattr(policy, "module", policy)  # unwrap DDP
        self.temperature = temperature
        self.micro_batch_size = micro_batch_size

    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()  # no adapter dropout
        try:
            with self.model.disable_adapter():
                return super().logprobs(batch)
        finally:
            self.model.train(was_training)


class RemoteReference:
    """Reference logprobs from `r1kit serve-ref` (services.reference_url): the same numbers, another machine.

    The server must serve the start model under the name the trainer expects (model.name_or_path by
    default); that is checked once here, so a wrong server fails at set-up, not at step 1.
    """

    def __init__(self, client, model_name: str, temperature: float):
        self.client = client  # r1kit.rollout.http.ServiceClient
        self.model_name = model_name
        self.temperature = temperature
        served = client.get("/health").get("model")
        if served != model_name:
            raise ServiceError(f"reference server at {client.url} serves model {served!r}, not {model_name!r} "
                               f"(start it with `r1kit serve-ref {model_name}`, or --served-model-name)")

    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        prompt_mask, completion_mask = batch.prompt_mask.bool().cpu(), batch.real_tokens.bool().cpu()
        prompts = [row[m].tolist() for row, m in zip(batch.prompt_ids.cpu(), prompt_mask)]
        completions = [row[m].tolist() for row, m in zip(batch.completion_ids.cpu(), completion_mask)]
        answer = self.client.post("/v1/logprobs", {"model": self.model_name, "prompt_ids": prompts,
                                                   "completion_ids": completions, "temperature": self.temperature})
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)  # (N, C)
        rows = answer.get("logprobs")
        if not isinstance(rows, list) or len(rows) != len(completions):
            raise ServiceError(f"reference server at {self.client.url} answered {len(rows or [])} rows for "
                               f"{len(completions)} completions")
        for i, (values, ids) in enumerate(zip(rows, completions)):
            if len(values) != len(ids):
                raise ServiceError(f"reference server at {self.client.url} answered {len(values)} logprobs for a "
                                   f"{len(ids)}-token completion")
            # serve-ref sends a logprob of -inf (probability 0) as null: strict JSON has no -Infinity
            out[i, :len(ids)] = torch.tensor([float("-inf") if v is None else v for v in values], dtype=torch.float32)
        return out * batch.completion_mask.cpu()  # inserted tokens (multi-turn) are not scored
