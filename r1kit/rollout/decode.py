"""r1kit's own decode loop for the HF engine: a group's prompt is prefilled once, finished rows leave the batch.

What `model.generate` + a logits processor does per generated token, with less work:
  - prefill: each distinct prompt of the chunk runs through the model once; its KV cache is then
    copied to the G rows that complete it (G times fewer prefill FLOPs; generate prefills every row);
  - decode: one forward of the rows still generating, the last position's logits only
    (logits_to_keep=1); a row that sampled an end token leaves the batch and its KV cache
    (generate keeps feeding finished rows pad tokens until the longest row ends);
  - sampling: r1kit.rollout.sampling's per-row streams, called directly (no processor list, no
    (N, V) score tensor kept per token).
The tokens and logprobs are those of `generate` with the SeededSampler (tests/test_decode.py): a
row's sample depends on its own seed, position and logits only, so neither sharing the prefill
nor dropping finished rows changes it. Position ids count real tokens only, as generate and the
trainer's forward do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from r1kit.rollout.sampling import greedy_next, sample_next


@dataclass
class Decoded:
    tokens: torch.Tensor  # (N, T) sampled tokens, pad after a row's end token
    logprobs: torch.Tensor  # (N, T) float32 logprob of each sampled token, 0 after the end
    lengths: torch.Tensor  # (N,) tokens per row, the end token included
    stopped: torch.Tensor  # (N,) bool: the row sampled an end token (else it was cut at T)


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


def new_cache(model, capacity: int) -> DynamicCache:
    """A cache for `capacity` positions: preallocated layers when every layer is a plain (full-attention)
    DynamicLayer, else the model's own DynamicCache layers (sliding windows, linear attention, ...)."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def prefill(model, prompts: list[list[int]], pad_id: int, device,
            capacity: int) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """(cache, last logits (U, V) float32, attention mask (U, P)) of the U distinct prompts."""
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    cache = new_cache(model, ids.shape[1] + capacity)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1].float(), mask


@torch.no_grad()
def decode(model, prompts: list[list[int]], row_prompt: list[int], row_seeds: list[int] | None, max_new_tokens: int,
           stop_ids: set[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Decoded:
    """Complete row i of N from prompts[row_prompt[i]]; greedy when row_seeds is None, else seeded sampling.

    prompts: U distinct token-id lists; row_prompt: (N,) indices into them; row_seeds: (N,) stream seeds.
    """
    device = next(model.parameters()).device
    n = len(row_prompt)
    cache, logits, mask = prefill(model, prompts, pad_id, device, max_new_tokens)
    expand = torch.tensor(row_prompt, device=device)
    cache.reorder_cache(expand)  # (U, ...) -> (N, ...): every row starts from its prompt's cache
    logits, mask = logits[expand], mask[expand]  # (N, V), (N, P)
    position = mask.sum(-1)  # (N,) the next token's position id
    width = mask.shape[1]
    keys = torch.cat([mask, mask.new_ones((n, max_new_tokens))], dim=1)  # (N, P + T) the keys each row may see
    # sdpa takes the (A, 1, 1, keys) bool mask transformers would otherwise build from the 2D one at every
    # step (a one-token query sees every real key; a 4D mask is used as it is); eager adds its mask to
    # the scores and flash attention reads 2D masks, so they get the 2D one
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        keys = keys.bool()[:, None, None]  # (N, 1, 1, P + T)
    seeds = None if row_seeds is None else torch.tensor(row_seeds, dtype=torch.int64, device=device)
    stop = torch.tensor(sorted(stop_ids), device=device)
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
    stopped = torch.zeros(n, dtype=torch.bool, device=device)
    alive = torch.arange(n, device=device)  # (A,) the rows still generating
    for t in range(max_new_tokens):
        if seeds is None:
            choice, logprob = greedy_next(logits)
        else:
            choice, logprob = sample_next(logits, seeds[alive], t, temperature, top_k, top_p)
        tokens[alive, t], logprobs[alive, t] = choice, logprob
        ended = torch.isin(choice, stop)  # (A,)
        if ended.any():
            lengths[alive[ended]] = t + 1
            stopped[alive[ended]] = True
            keep = torch.nonzero(~ended).squeeze(-1)
            if not keep.numel():
                break
            cache.batch_select_indices(keep)  # finished rows leave the batch and the cache
            alive, choice, keys, position = alive[keep], choice[keep], keys[keep], position[keep]
        if t + 1 == max_new_tokens:
            break
        out = model(input_ids=choice.unsqueeze(-1), attention_mask=keys[..., :width + t + 1],  # (A, [1, 1,] P + t + 1)
                    position_ids=position.unsqueeze(-1), past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits, position = out.logits[:, -1].float(), position + 1
    return Decoded(tokens.cpu(), logprobs.cpu(), lengths.cpu(), stopped.cpu())
