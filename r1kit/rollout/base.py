"""The Engine interface every generation backend implements.

An engine knows nothing about rewards or losses: prompts (token ids) in, completions out. The HF
engine runs `model.generate` on the training model itself; a colocated vLLM engine or a remote
vLLM server fit the same three methods, so the training loop never changes with the backend.
"""

from __future__ import annotations

from typing import Protocol

from r1kit.types import Completion, SamplingParams


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        """n completions per prompt, grouped: result[i*n:(i+1)*n] complete prompts[i]."""

    def update_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares them)."""

    def close(self) -> None:
        """Release processes, servers and memory held by the engine."""
