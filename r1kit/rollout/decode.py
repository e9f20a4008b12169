"""r1kit's own decode loop for the HF engine: a group's prompt is prefilled once, finished rows leave the batch.

What `model.generate` + a logits processor does per generated token, with less work:
  - prefill: each distinct prompt of the chunk runs through the model once; its KV cache is then
    copied to the G rows that complete it (G times fewer prefill FLOPs; generate prefills every row);
  - decode: one forward of the rows still generating, the last position's logits only
    (logits_to_keep=1; for Llama-family models r1kit.rollout.decode_step's lean step, the same
    operations with less Python); a row that sampled an end token leaves the batch and its KV cache
    (generate keeps feeding finished rows pad tokens until the longest row ends);
  - sampling: r1kit.rollout.sampling's per-row streams, called directly (no processor list, no
    (N, V) score tensor kept per token).
The tokens and logprobs are those of `generate` with the SeededSampler (tests/test_decode.py): a
row's sample depends on its own seed, position and logits only, so neither sharing the prefill
nor dropping finished rows changes it. Position ids count real tokens only, as generate and the
trainer's forward do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from r1kit.rollout.decode_step import decode_step_for, forward_step
from r1kit.rollout.kv_cache import decode_keys, prefill
from r1kit.rollout.sampling import greedy_next, sample_next


@dataclass
class Decoded:
    tokens: torch.Tensor  # (N, T) sampled tokens, pad after a row's end token
    logprobs: torch.Tensor  # (N, T) float32 logprob of each sampled token, 0 after the end
    lengths: torch.Tensor  # (N,) tokens per row, the end token included
    stopped: torch.Tensor  # (N,) bool: the row sampled an end token (else it was cut at T)


@torch.no_grad()
def decode(model, prompts: list[list[int]], row_prompt: list[int], row_seeds: list[int] | None, max_new_tokens: int,
           stop_ids: set[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Decoded:
    """Complete row i of N from prompts[row_prompt[i]]; greedy when row_seeds is None, else seeded sampling.

    prompts: U distinct token-id lists; row_prompt: (N,) indices into them; row_seeds: (N,) stream seeds.
    """
    device = next(model.parameters()).device
    n = len(row_prompt)
    cache, logits, mask = prefill(model, prompts, pad_id, device, max_new_tokens)
    # the lean step where it is bitwise the model's forward, else the forward itself
    step = decode_step_for(model, cache) or functools.partial(forward_step, model)
    expand = torch.tensor(row_prompt, device=device)
    cache.reorder_cache(expand)  # (U, ...) -> (N, ...): every row starts from its prompt's cache
    logits, mask = logits[expand], mask[expand]  # (N, V), (N, P)
    position = mask.sum(-1)  # (N,) the next token's position id
    width = mask.shape[1]
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    keys = decode_keys(mask, max_new_tokens, sdpa)  # (N, [1, 1,] P + T)
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
        logits = step(choice.unsqueeze(-1), keys[..., :width + t + 1], position.unsqueeze(-1), cache)  # (A, V)
        position = position + 1
    return Decoded(tokens.cpu(), logprobs.cpu(), lengths.cpu(), stopped.cpu())
