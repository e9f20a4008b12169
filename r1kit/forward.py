"""The policy forward that scores completions: sampled-token logprobs and entropy, never full logits.

The model body runs as usual (the prepared model, so DDP, DeepSpeed ZeRO and FSDP2 run their hooks,
LoRA adapters and gradient checkpointing included); for the duration of the call its output head
(`get_output_embeddings()`) computes, instead of (rows, positions, vocabulary) logits, the logprob and
entropy of the scored positions in chunks (r1kit.algo.head). The head is still called as a module,
inside the model's own forward, which is what makes this work under sharding: ZeRO-3 gathers the head's
weight in the head's pre-forward hook and again before its backward, and FSDP2 unshards the root's
parameters (the head's included) around the root forward and backward. A submodule called from outside
would see partitioned weights.

Three layouts of the same rows (equal results, to fp32 round-off):
- padded: (N, P+C), prompts left-padded, completions right-padded, with an attention mask;
- packed: each sequence's real tokens only, laid end to end in rows of at most the longest sequence,
  position ids restarting at 0 per sequence and no attention mask: transformers' masking_utils reads the
  restarts as packed sequences and keeps them from attending to each other (sdpa, eager, flash, flex);
- shared: a group's prompt appears once, followed by its completions, each attending to the prompt and
  to itself. The G completions of a group share one prompt, so the prompt's tokens are computed once
  instead of G times, and the gradient reaches them from every completion through attention, as with G
  copies. With sdpa, each layer attends through r1kit.prompt_attention (only the pairs a token may see:
  a group stays in one row however long); with eager, through a 4D mask, which transformers passes to
  the attention as it is (dense over the row, so long groups are cut into rows with a prompt copy each).

Deviation, on purpose: models whose forward transforms the logits after the head (Gemma-2/3 soft-capping,
Cohere's logit_scale, Granite's logits_scaling) are refused with a clear error rather than scored wrongly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from r1kit import prompt_attention
from r1kit.algo.head import chunked_logprobs_and_entropy, matmul_row_multiple, round_up_rows
from r1kit.rollout.hf import transformers_forward

# config attributes of models that change the logits after the output head (see the module docstring)
POST_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass
class Layout:
    """One forward's inputs and where its scored positions are.

    input_ids, position_ids (R, L); attention_mask (R, L) (padded; all ones for shared prompts with
    `attention_kwargs`), None (packed) or (R, 1, L, L) (shared prompts, dense: passed to the attention
    as it is); logits_to_keep as the model takes it; targets (R, K) the token each kept position
    predicts, scored (R, K) bool where it counts; source (N, C) the flat index into (R*K) of completion
    token (n, c), valid where the completion mask is 1; attention_kwargs: extra arguments of the
    model's forward (r1kit_segments, for r1kit.prompt_attention).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    logits_to_keep: int
    targets: torch.Tensor
    scored: torch.Tensor
    source: torch.Tensor
    attention_kwargs: dict = field(default_factory=dict)


def first_fit(lengths: list[int]) -> tuple[int, list[list[int]]]:
    """(width, rows): the items of `lengths` placed first-fit, longest first, into rows as wide as the longest."""
    width = max(max(lengths), 1)
    rows: list[list[int]] = []
    free: list[int] = []
    for n in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if free[r] >= lengths[n]), None)
        if r is None:
            rows.append([])
            free.append(width)
            r = len(rows) - 1
        rows[r].append(n)
        free[r] -= lengths[n]
    return width, rows


def real_lengths(prompt_mask, completion_mask) -> tuple[list[int], list[int]]:
    """Real prompt and completion tokens per row; every completion needs a prompt (its first token is
    predicted from the prompt's last)."""
    prompt_len, completion_len = prompt_mask.sum(-1).tolist(), completion_mask.sum(-1).tolist()
    if min(prompt_len, default=1) < 1:
        raise ValueError("every completion needs a prompt of at least one token (its first token is predicted from it)")
    return prompt_len, completion_len


def padded_layout(prompt_ids, prompt_mask, completion_ids, completion_mask) -> Layout:
    """(N, P) left-padded prompts and (N, C) right-padded completions as one (N, P+C) padded batch.
    Position ids count real tokens only, as `generate` does (so the result matches the engine's logprobs)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+C)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    N, C = completion_ids.shape
    # the last C+1 positions are kept: position P-1+c predicts completion token c; the very last predicts nothing
    targets = torch.nn.functional.pad(completion_ids, (0, 1))  # (N, C+1)
    scored = torch.nn.functional.pad(completion_mask.bool(), (0, 1))
    source = torch.arange(N * (C + 1), device=completion_ids.device).view(N, C + 1)[:, :C]
    return Layout(input_ids, position_ids, attention_mask, C + 1, targets, scored, source)


def packed_layout(prompt_ids, prompt_mask, completion_ids, completion_mask) -> Layout:
    """The same N sequences without padding: real prompt + completion tokens end to end, first-fit
    into rows as wide as the longest sequence (longest first), position ids restarting per sequence.
    A row's unused tail holds token 0 with its own restarting positions, never scored."""
    prompt_len, completion_len = real_lengths(prompt_mask, completion_mask)
    width, rows = first_fit([p + c for p, c in zip(prompt_len, completion_len)])  # sequence indices per row
    N, C = completion_ids.shape
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # the tail's token id does not matter
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    source = torch.zeros((N, C), dtype=torch.long)
    prompt_ids, prompt_mask, completion_ids = prompt_ids.cpu(), prompt_mask.cpu().bool(), completion_ids.cpu()
    for r, members in enumerate(rows):
        at = 0
        for n in members:
            p, c = prompt_len[n], completion_len[n]
            tokens = torch.cat([prompt_ids[n][prompt_mask[n]], completion_ids[n, :c]])  # (p+c,)
            input_ids[r, at:at + p + c] = tokens
            position_ids[r, at:at + p + c] = torch.arange(p + c)
            first = at + p - 1  # the position that predicts completion token 0
            targets[r, first:first + c] = completion_ids[n, :c]
            scored[r, first:first + c] = True
            source[n, :c] = r * width + torch.arange(first, first + c)
            at += p + c
        position_ids[r, at:] = torch.arange(width - at)  # the tail is a sequence of its own
    device = completion_mask.device
    return Layout(input_ids.to(device), position_ids.to(device), None, 0, targets.to(device), scored.to(device),
                  source.to(device))


# With a dense 4D mask a shared-prefix row's attention is computed over the whole row (the mask hides
# what a completion may not see, but the attention still computes it), so a group whose completions are
# long is split into several rows, each with its own copy of the prompt, none wider than this unless
# one completion needs more. r1kit.prompt_attention computes the visible pairs only and needs no cut.
SHARED_ROW_TOKENS = 512


def shared_prefix_layout(prompt_ids, prompt_mask, completion_ids, completion_mask, row_tokens: int = SHARED_ROW_TOKENS,
                         mask_dtype: torch.dtype = torch.bool, segments: bool = False, row_multiple: int = 1) -> Layout:
    """The N sequences with each distinct prompt laid out once per row, followed by its completions.

    A completion's segment is [last prompt token, its tokens but the last]: position k of segment j
    predicts completion token k (so every completion gets its own prediction of its first token), with
    position ids continuing the prompt's. The row holds the prompt's other tokens once, then segments;
    a segment attends causally to its own tokens and to its group's prompt, never to another segment.
    Groups (completions with identical prompt tokens) are cut into units of at most `row_tokens`
    positions (one segment at least), and units are placed first-fit, longest first, into rows as
    wide as the widest unit. attention_mask is (R, 1, W, W): bool (True = attend, for sdpa) or, for
    another `mask_dtype`, additive (0 / the dtype's minimum, for eager). A row's unused tail attends to
    itself only (no position is left without a key), and is never scored. With `segments`, groups are
    not cut and all units share one row (R = 1: first-fit rows as wide as the widest unit left a
    quarter of a tiny batch's positions as tail, computed by every linear layer) with a tail that rounds
    the width up to a multiple of `row_multiple` (r1kit.algo.head.matmul_row_multiple), attention_mask is
    (1, W) ones and attention_kwargs carries the r1kit.prompt_attention index of the same pattern
    (the model must attend through it: see score_completions).
    """
    if segments:
        row_tokens = float("inf")
    prompt_len, completion_len = real_lengths(prompt_mask, completion_mask)
    prompt_ids, prompt_mask, completion_ids = prompt_ids.cpu(), prompt_mask.cpu().bool(), completion_ids.cpu()
    prompts = [prompt_ids[n][prompt_mask[n]] for n in range(len(prompt_len))]
    groups: dict[tuple, list[int]] = {}  # prompt tokens -> the completions that continue it, in order
    for n, tokens in enumerate(prompts):
        groups.setdefault(tuple(tokens.tolist()), []).append(n)
    units: list[list[int]] = []  # completions sharing one copy of their prompt (all from one group)
    for members in groups.values():
        unit, size = [], prompt_len[members[0]] - 1
        for n in members:
            if unit and size + completion_len[n] > row_tokens:
                units.append(unit)
                unit, size = [], prompt_len[members[0]] - 1
            unit.append(n)
            size += completion_len[n]
        units.append(unit)
    unit_len = [prompt_len[u[0]] - 1 + sum(completion_len[n] for n in u) for u in units]
    if segments:  # attention follows the index, not the rows: one row of every unit, its width (the row count of
        # every layer's matmuls) rounded up by an unused tail
        width, rows = round_up_rows(max(sum(unit_len), 1), row_multiple), [list(range(len(units)))]
    else:
        width, rows = first_fit(unit_len)  # unit indices per row
    N, C = completion_ids.shape
    R = len(rows)
    input_ids = torch.zeros((R, width), dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    targets = torch.zeros((R, width), dtype=torch.long)
    scored = torch.zeros((R, width), dtype=torch.bool)
    source = torch.zeros((N, C), dtype=torch.long)
    unit_prompts: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)] * len(units)  # flat positions
    unit_segments: list[tuple[torch.Tensor, int]] = []  # (flat positions, unit) per non-empty completion
    for r, members in enumerate(rows):
        at = 0
        for u in members:
            first = units[u][0]
            p = prompt_len[first]
            input_ids[r, at:at + p - 1] = prompts[first][:-1]
            position_ids[r, at:at + p - 1] = torch.arange(p - 1)
            unit_prompts[u] = r * width + torch.arange(at, at + p - 1)
            at += p - 1
            for n in units[u]:
                c = completion_len[n]
                input_ids[r, at:at + c] = torch.cat([prompts[first][-1:], completion_ids[n, :c - 1]])[:c]
                position_ids[r, at:at + c] = torch.arange(p - 1, p - 1 + c)
                targets[r, at:at + c] = completion_ids[n, :c]
                scored[r, at:at + c] = True
                source[n, :c] = r * width + torch.arange(at, at + c)
                if c:
                    unit_segments.append((r * width + torch.arange(at, at + c), u))
                at += c
        position_ids[r, at:] = torch.arange(width - at)
    device = completion_mask.device
    if segments:
        index = prompt_attention.segment_index(unit_prompts, unit_segments, R * width).to(device)
        return Layout(input_ids.to(device), position_ids.to(device), torch.ones((R, width), dtype=torch.long,
                      device=device), 0, targets.to(device), scored.to(device), source.to(device),
                      {"r1kit_segments": index})
    attention_mask = _dense_mask(unit_prompts, unit_segments, R, width, mask_dtype)
    return Layout(input_ids.to(device), position_ids.to(device), attention_mask.to(device), 0, targets.to(device),
                  scored.to(device), source.to(device))


def _dense_mask(unit_prompts: list[torch.Tensor], unit_segments: list[tuple[torch.Tensor, int]], rows: int,
                width: int, mask_dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, W, W) the shared layout's pattern as one mask: a position attends causally within its unit,
    to keys in the unit's prompt or in its own segment; a row's unused tail attends to itself only. Bool
    (True = attend) for `mask_dtype` bool, else additive (0 / the dtype's minimum)."""
    unit_of = torch.arange(rows * width) + len(unit_prompts)  # tail positions: a unit of their own
    segment_of = torch.arange(rows * width) + len(unit_segments) + 1  # prompt: 0; segment s: s + 1
    for u, positions in enumerate(unit_prompts):
        unit_of[positions], segment_of[positions] = u, 0
    for s, (positions, u) in enumerate(unit_segments):
        unit_of[positions], segment_of[positions] = u, s + 1
    unit_of, segment_of = unit_of.view(rows, width), segment_of.view(rows, width)
    q, k = (slice(None), slice(None), None), (slice(None), None, slice(None))  # (R, W, 1) vs (R, 1, W)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (unit_of[q] == unit_of[k]) & ((segment_of[k] == 0) | (segment_of[q] == segment_of[k]))
    allowed = allowed[:, None]  # (R, 1, W, W)
    if mask_dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill(~allowed, torch.finfo(mask_dtype).min)


def make_layout(kind: str, model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> Layout:
    """The `kind` ("padded", "packed" or "shared") layout of these rows for `model`: a shared layout
    attends through r1kit.prompt_attention with sdpa, and through an additive 4D mask in the model's
    dtype with eager, which adds it to its scores."""
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    if kind == "shared":
        if unwrapped(model).config._attn_implementation == "eager":
            return shared_prefix_layout(*args, mask_dtype=next(model.parameters()).dtype)
        prompt_attention.install()
        return shared_prefix_layout(*args, segments=True, row_multiple=matmul_row_multiple(next(model.parameters())))
    return {"padded": padded_layout, "packed": packed_layout}[kind](*args)


def shares_prompts(model) -> bool:
    """Whether the shared-prefix layout is safe for `model`: one of transformers' own (a 4D mask is passed
    to its attention as it is), with sdpa or eager attention (flash-attention kernels take no 4D mask)
    and no sliding-window layers (the custom mask would replace their window)."""
    config = unwrapped(model).config
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    sliding = sliding or "sliding_attention" in (getattr(config, "layer_types", None) or ())
    return packs_sequences(model) and config._attn_implementation in ("sdpa", "eager") and not sliding


def packs_sequences(model) -> bool:
    """Whether a packed layout is safe for `model`: transformers' own model classes build their masks
    with masking_utils, which separates packed sequences; a remote-code model's attention may not."""
    return transformers_forward(unwrapped(model))


def unwrapped(model) -> torch.nn.Module:
    """The transformers model inside DDP / a DeepSpeed engine / peft (FSDP2 shards in place)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def scoring_head(model, layout: Layout, temperature: float, with_entropy: bool, entropy_grad: bool):
    """For one call of `model`, its output head returns (R, K, 2) float32 [logprob, entropy] of the
    layout's targets at its scored positions (0 elsewhere) instead of logits; `calls` counts its uses."""
    inner = unwrapped(model)
    config = getattr(inner, "config", None)
    for key in POST_HEAD_TRANSFORMS:
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise NotImplementedError(
                f"{type(inner).__name__} changes its logits after the output head ({key}={getattr(config, key)}), "
                "which r1kit's chunked logprob computation (r1kit.forward) does not implement")
    head = inner.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):  # LoRA or modules_to_save wrap it in another module (FSDP2 subclasses it)
        raise NotImplementedError(f"the output head is a {type(head).__name__}, not a plain Linear: r1kit scores "
                                  "completions through the head's weight in chunks; do not put adapters on lm_head")
    calls = []

    def score(hidden: torch.Tensor) -> torch.Tensor:  # (R, K, H) -> (R, K, 2)
        mask = layout.scored
        logprobs, entropy = chunked_logprobs_and_entropy(
            hidden[mask], head.weight, layout.targets[mask], temperature, head.bias, with_entropy, entropy_grad)
        values = torch.stack([logprobs, entropy if entropy is not None else torch.zeros_like(logprobs)], -1)
        out = torch.zeros((*mask.shape, 2), dtype=torch.float32, device=hidden.device)
        out[mask] = values  # (M, 2) into the scored positions
        calls.append(1)
        return out

    head.forward = score  # an instance attribute: the module's hooks still run around it
    try:
        yield calls
    finally:
        del head.forward


def score_completions(model, layout: Layout, completion_mask: torch.Tensor, temperature: float = 1.0,
                      with_entropy: bool = True, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) logprobs of the completion tokens and (N, C) entropy of the temperature-scaled next-token
    distribution at each completion position (None unless with_entropy; detached unless entropy_grad),
    0 where completion_mask is 0."""
    with scoring_head(model, layout, temperature, with_entropy, entropy_grad) as calls:
        out = model(input_ids=layout.input_ids, attention_mask=layout.attention_mask,
                    position_ids=layout.position_ids, use_cache=False, logits_to_keep=layout.logits_to_keep,
                    **layout.attention_kwargs).logits
    index = layout.attention_kwargs.get("r1kit_segments")
    if index is not None:
        layers = unwrapped(model).config.get_text_config().num_hidden_layers
        if index.calls != layers:  # a layer that attended otherwise saw the whole row
            raise RuntimeError(f"{type(unwrapped(model)).__name__}: {index.calls} of its {layers} layers attended "
                               "through r1kit.prompt_attention; the shared-prompt layout needs all of them")
    if len(calls) != 1 or out.shape[-1] != 2:
        raise RuntimeError(f"{type(unwrapped(model)).__name__} did not return its output head's result as logits "
                           f"(head called {len(calls)} times, output {tuple(out.shape)}): r1kit.forward cannot score it")
    mask = completion_mask.bool()
    values = out.reshape(-1, 2)[layout.source]  # (N, C, 2)
    values = torch.where(mask[..., None], values, 0.0)
    return values[..., 0], values[..., 1] if with_entropy else None
