"""Attention for the shared-prompt layout that computes only what the layout lets each token see.

In a shared-prompt row (r1kit.forward.shared_prefix_layout) a completion's segment sees its group's
prompt and itself, nothing else. Dense attention over the row with a 4D mask computes every pair of
the row and hides most of them (a group of 8 completions leaves about 1/8 of the row's pairs visible),
so the row had to stay short, and a long group was cut into rows that each carried a copy of the
prompt. Here every attention layer instead gathers, for each block of queries, only the keys it may
see, and runs sdpa on those:
  - prompts: a unit's prompt positions attend causally to each other;
  - segments: a completion's positions attend to its unit's prompt (all of it) and causally to themselves.
The outputs are put back in row order by one gather; a row's unused tail gets zeros (never scored,
never attended to). Gradients flow back through the gathers to every position, the prompt's included.

transformers picks a layer's attention function by name from its AttentionInterface; `install()`
registers `attend` as "sdpa", which calls transformers' own sdpa function unchanged unless the forward
was given `r1kit_segments` (transformers passes a forward's extra keyword arguments down to the
attention function, through gradient checkpointing's recomputation too). The index counts its uses:
r1kit.forward checks after each forward that every layer took this path (a model whose layers drop
the argument is refused, not scored with the wrong attention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


@dataclass
class Block:
    """Queries that attend together: queries (B, Lq) and keys (B, Lk) flat row positions (R*W indexing),
    mask (B, 1, Lq, Lk) bool, True = may attend; real (B, Lq) bool, False for padding. Padded entries
    point at position 0 and are masked (a padded query still sees one key, so no row of the softmax is
    empty; its output is never used)."""

    queries: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    real: torch.Tensor

    def to(self, device) -> "Block":
        return Block(self.queries.to(device), self.keys.to(device), self.mask.to(device), self.real.to(device))


@dataclass
class SegmentIndex:
    """The attention pattern of one shared-prompt layout, for every layer of one forward.

    blocks: the query blocks (prompts, then segments by length); inverse (R*W,) for each row position,
    its index in the blocks' outputs laid end to end (a padded block entry's slot is never chosen), or the
    last index, a zero row, for the unused tail; calls: layers that attended through this index.
    """

    blocks: list[Block]
    inverse: torch.Tensor
    calls: int = field(default=0)

    def to(self, device) -> "SegmentIndex":
        return SegmentIndex([b.to(device) for b in self.blocks], self.inverse.to(device))

    def attend(self, module, query, key, value, dropout: float, scaling: float | None) -> torch.Tensor:
        """query (R, Hq, W, D), key/value (R, Hkv, W, D) -> (R, W, Hq, Dv), as transformers' attention returns it."""
        rows, heads, width, _ = query.shape

        def flat(x):  # (R, H, W, D) -> (R*W, H, D): one entry per row position
            return x.transpose(1, 2).reshape(rows * width, x.shape[1], x.shape[-1])

        q, k, v = flat(query), flat(key), flat(value)
        # On a CPU, sdpa's bf16/fp16 backward takes 5-7x its fp32 time at these block shapes (the tiny
        # world's bf16 update: 37% of it), while the rest of the model gains from bf16 matmuls: so the
        # blocks attend in fp32 there (fp32 accumulation either way), and the output is cast back.
        low_precision_cpu = query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)
        if low_precision_cpu:
            q, k, v = q.float(), k.float(), v.float()
        outputs = []
        for block in self.blocks:
            out = _block_attention(module, _take(q, block.queries).transpose(1, 2), _take(k, block.keys).transpose(1, 2),
                                   _take(v, block.keys).transpose(1, 2), block.mask, dropout, scaling)  # (B, Lq, Hq, Dv)
            outputs.append(out.reshape(-1, heads, out.shape[-1]))
        outputs.append(q.new_zeros((1, heads, v.shape[-1])))  # the tail's output
        self.calls += 1
        out = _take(torch.cat(outputs), self.inverse).view(rows, width, heads, -1)
        return out.to(query.dtype) if low_precision_cpu else out


_SDPA_HAS_GQA = torch.__version__ >= (2, 5)  # enable_gqa came with torch 2.5


def _block_attention(module, query, key, value, mask, dropout: float, scaling: float | None) -> torch.Tensor:
    """query (B, Hq, Lq, D), key/value (B, Hkv, Lk, D), mask (B, 1, Lq, Lk) -> (B, Lq, Hq, Dv).

    With grouped key/value heads (Hkv < Hq) and a mask, transformers' sdpa function repeats each key/value
    head for its query heads, because CUDA's fused kernels take no mask with grouped heads. sdpa's CPU
    kernel does (enable_gqa), reading each key/value head once: SmolLM2's blocks (9 query heads, 3 key/value
    heads), forward + backward 10-35% faster on this CPU, without the repeated copies; same outputs, the
    key/value gradients summed over the group in another order (within float rounding)."""
    if query.device.type == "cpu" and query.shape[1] != key.shape[1] and _SDPA_HAS_GQA:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                             enable_gqa=True)  # (B, Hq, Lq, Dv)
        return out.transpose(1, 2)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False)[0]


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for (P, ...) x and an index of any shape, as index_select: its backward adds the gradient
    back with index_add_, where x[index]'s backward (index_put_ with accumulate) sorts the indices first
    (on a CPU the tiny world's bf16 update spent ~10% of its time in those gathers and scatters)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def segment_index(prompts: list[torch.Tensor], segments: list[tuple[torch.Tensor, int]], positions: int) -> SegmentIndex:
    """The index of a layout from its units' prompt positions and its segments.

    prompts: per unit, the flat positions of its prompt tokens (all but the prompt's last, which opens
    each segment; may be empty); segments: per completion with at least one token, (its flat positions,
    its unit); positions: R*W.
    """
    blocks = []
    with_prompt = [u for u, p in enumerate(prompts) if len(p)]
    prompt_width = max((len(p) for p in prompts), default=0)
    if with_prompt:
        queries, valid = _padded([prompts[u] for u in with_prompt])  # (U, Pm)
        causal = torch.ones(queries.shape[1], queries.shape[1], dtype=torch.bool).tril()
        blocks.append(Block(queries, queries, (causal & valid[:, None, :])[:, None], valid))
    for members in _by_length([len(s) for s, _ in segments]):
        own, own_valid = _padded([segments[i][0] for i in members])  # (S, Lm)
        seen, seen_valid = _padded([prompts[segments[i][1]] for i in members], width=prompt_width)  # (S, Pm)
        causal = torch.ones(own.shape[1], own.shape[1], dtype=torch.bool).tril()
        mask = torch.cat([seen_valid[:, None, :].expand(-1, own.shape[1], -1), causal & own_valid[:, None, :]], dim=-1)
        blocks.append(Block(own, torch.cat([seen, own], dim=1), mask[:, None], own_valid))
    queries = torch.cat([b.queries.reshape(-1) for b in blocks]) if blocks else torch.zeros(0, dtype=torch.long)
    real = torch.cat([b.real.reshape(-1) for b in blocks]) if blocks else torch.zeros(0, dtype=torch.bool)
    inverse = torch.full((positions,), len(queries), dtype=torch.long)  # the zero row after the blocks
    inverse[queries[real]] = torch.nonzero(real).squeeze(-1)
    return SegmentIndex(blocks, inverse)


def _by_length(lengths: list[int]) -> list[list[int]]:
    """Indices of `lengths` in blocks, longest first, each block's lengths at least half its longest.

    A block pads every segment to its longest; one block for a whole batch (completions of 8 to 48
    tokens, say) would compute about three times the queries there are. Halving bounds the padded
    queries at twice the real ones, in a handful of sdpa calls per layer (measured on the tiny
    world's update: 4 blocks take half the attention time of one)."""
    blocks: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if not blocks or 2 * lengths[i] < lengths[blocks[-1][0]]:
            blocks.append([])
        blocks[-1].append(i)
    return blocks


def _padded(lists: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, valid), both (len(lists), width): the lists left-aligned, padded with position 0."""
    width = max((len(x) for x in lists), default=0) if width is None else width
    values = torch.zeros((len(lists), width), dtype=torch.long)
    valid = torch.zeros((len(lists), width), dtype=torch.bool)
    for i, x in enumerate(lists):
        values[i, :len(x)], valid[i, :len(x)] = x, True
    return values, valid


def attend(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
           r1kit_segments: SegmentIndex | None = None, **kwargs):
    """transformers' sdpa attention, or the shared-prompt pattern when the forward passed `r1kit_segments`."""
    if r1kit_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return r1kit_segments.attend(module, query, key, value, dropout, scaling), None


def install() -> None:
    """Make `attend` transformers' "sdpa" attention (idempotent; without `r1kit_segments` it is the same)."""
    if AttentionInterface._global_mapping.get("sdpa") is not attend:
        AttentionInterface.register("sdpa", attend)
