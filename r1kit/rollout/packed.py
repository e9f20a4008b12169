"""bf16 linear layers that read prepacked weights while the HF engine generates on a CPU.

On a CPU, PyTorch computes a bf16 matmul with oneDNN, whose AMX / AVX-512 kernels read the weight in a
blocked layout: given an nn.Linear's plain (out, in) weight, every call first copies the whole weight into
that layout, then reads the copy. A decode step reads every weight once for a few rows, so that copy is
most of its memory traffic (SmolLM2-135M, 8 rows: one gate/up projection 280 -> 177 us per call with the
weight packed once, the lm_head 6.8 -> 2.5 ms). `packed_linears` packs each bf16 weight once per
generate call and routes the model's nn.Linear calls to the packed copy for its duration; the kernels
are the same, so for a decode step's few rows the outputs are bitwise the same (tests/test_packed.py).

A oneDNN call also costs ~20 us whatever its size (the tiny world's 192 x 192 projection: 22 us for 32 rows,
~1 us of it arithmetic), so sibling projections that read the same input (a decoder layer's q/k/v, its
MLP's gate/up) are computed as one matmul over their concatenated weights: 3 calls of the tiny world's
q/k/v 68 -> 29 us, gate/up 65 -> 41 us. Each output column is the same dot product summed the same way,
so the pieces are bitwise what the separate layers give (checked by the probe, like the packing itself).

The two ops are PyTorch's private oneDNN ops (`torch.ops.mkldnn._reorder_linear_weight`,
`_linear_pointwise`), the ones torch.compile's CPU backend uses for frozen linear weights; whether they
exist and agree bitwise with F.linear is checked once per process, and without them generation runs the
plain nn.Linear forward, as it always did (same outputs, only slower).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
import torch.nn.functional as F

# Packed weights serve calls of at most PACKED_MAX_ROWS rows (a decode step's), tuned for that size; larger
# calls (a prefill) take the plain path, where one copy of the weight is shared by many rows anyway. Within
# that bound the packed kernels give F.linear's outputs bitwise: measured on this CPU (AMX) for 1-32 rows
# on the layer shapes of the tiny world, SmolLM2 and Qwen2.5, and others up to 2048 x 8192. Beyond it,
# oneDNN's plain path picks kernels by batch size and may sum in another order (a 512 x 2048 weight: from
# 37 rows on). The layout tuned for 1 row is another one, which may round differently at any size.
PACKED_MAX_ROWS = 32

# Sibling nn.Linear layers (names in one parent module) that transformers' decoder layers call on one input.
# A name is only a hint: the pieces of a shared matmul are served to a call only for the very input (same
# tensor object, unmodified) they were computed from, and a group whose members read different inputs
# stops sharing (_SharedInput).
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _packable_input(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() <= PACKED_MAX_ROWS * x.shape[-1]


def _packed_forward(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) computed from `packed`, weight's prepacked copy; x (..., in) -> (..., out)."""
    if not _packable_input(x):
        return F.linear(x, weight, bias)  # what nn.Linear does (and fails with, for a wrong dtype)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _version(x: torch.Tensor) -> int | None:
    return None if x.is_inference() else x._version


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_MAX_ROWS)


class _SharedInput:
    """Sibling linears computed as one packed matmul: the first member called with an input computes every
    member's output, and each other member called with that same input takes its piece.

    Served only to the identical input (the same tensor object, and its version counter unchanged where it
    has one: inference tensors have none). That a model modifies the input in place between its sibling
    calls is ruled out by training: F.linear saves its input for the weight's gradient, and autograd refuses
    a backward through a modified one. A call with any other input while pieces wait means the members do
    not share their input in this model, and the group goes back to each layer's own F.linear for good
    (same outputs; a model that calls q/k/v on different inputs, as cross-attention does, is only slower
    than with packing, never wrong)."""

    def __init__(self, linears: list[torch.nn.Linear]):
        self.linears = linears
        self.sizes = [m.out_features for m in linears]
        self.packed = _pack(torch.cat([m.weight.detach() for m in linears]))  # from the (sum of out, in) weight
        self.bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
        self.waiting: dict[int, torch.Tensor] = {}  # member index -> its output for `self.source`
        self.source: tuple[torch.Tensor, int] | None = None  # the input they were computed from, its version
        self.shared = True

    def forward(self, x: torch.Tensor, member: int) -> torch.Tensor:
        linear = self.linears[member]
        if not self.shared or not _packable_input(x):
            return F.linear(x, linear.weight, linear.bias)
        if self.waiting:
            if member in self.waiting and self.source[0] is x and self.source[1] == _version(x):
                piece = self.waiting.pop(member)
                if not self.waiting:
                    self.source = None
                return piece
            self.shared, self.waiting, self.source = False, {}, None
            return F.linear(x, linear.weight, linear.bias)
        pieces = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "").split(self.sizes, -1)
        self.waiting = {i: piece for i, piece in enumerate(pieces) if i != member}
        self.source = (x, _version(x))
        return pieces[member]


def onednn_bf16() -> bool:
    """Whether PyTorch computes bf16 matmuls on this CPU with oneDNN (the path packing speeds up)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _agrees(layers: list[torch.nn.Linear], x: torch.Tensor) -> bool:
    """Whether each layer's packed forward, alone and as one shared-input group, is its F.linear bitwise."""
    group = _SharedInput(layers)
    for member, m in enumerate(layers):
        expected = F.linear(x, m.weight, m.bias)
        alone = _packed_forward(x, m.weight, _pack(m.weight), m.bias)
        if not (torch.equal(alone, expected) and torch.equal(group.forward(x, member), expected)):
            return False
    return True


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch has the oneDNN bf16 packing ops and they give F.linear's outputs bitwise."""
    try:
        if not onednn_bf16():
            return False
        gen = torch.Generator().manual_seed(0)
        for out_features, in_features in ((48, 40), (512, 2048), (40, 1536)):
            for bias in (False, True):
                layers = [torch.nn.Linear(in_features, size, bias=bias, dtype=torch.bfloat16)
                          for size in (out_features, out_features // 2)]
                with torch.no_grad():
                    for p in (p for m in layers for p in m.parameters()):
                        p.copy_(torch.randn(p.shape, generator=gen))
                for shape in ((1, in_features), (3, 2, in_features), (PACKED_MAX_ROWS, in_features)):
                    if not _agrees(layers, torch.randn(*shape, generator=gen).bfloat16()):
                        return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):  # ops missing in this build, or refused
        return False


def packable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's plain nn.Linear layers (subclasses such as quantized or LoRA layers excluded; a LoRA
    layer's own base and adapter nn.Linear modules are included) whose weight is a bf16 CPU tensor."""
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.bfloat16 and (m.bias is None or m.bias.dtype == torch.bfloat16)]


def shared_input_groups(model: torch.nn.Module, linears: list[torch.nn.Linear]) -> list[list[torch.nn.Linear]]:
    """The SHARED_INPUT_GROUPS among `linears`: sibling layers of those names, all present, with one input width
    and all or none with a bias."""
    chosen = set(linears)
    groups = []
    for parent in model.modules():
        for names in SHARED_INPUT_GROUPS:
            members = [parent._modules.get(name) for name in names]
            if all(m in chosen for m in members) and len({(m.in_features, m.bias is None) for m in members}) == 1:
                groups.append(members)
    return groups


@contextmanager
def packed_linears(model: torch.nn.Module):
    """Within: the model's bf16 CPU nn.Linear layers compute from weights packed on entry (one extra copy of
    those weights, freed on exit), sibling projections of one input as one matmul. Only for forwards
    without autograd and weights that do not change inside: the packed copy is a snapshot."""
    linears = packable_linears(model)
    if linears and not packing_available():  # probed only for a model with something to pack (its kernels cost memory)
        linears = []
    try:
        groups = shared_input_groups(model, linears)
        grouped = {m for group in groups for m in group}
        for m in linears:
            if m not in grouped:
                weight = m.weight.detach()
                m.forward = functools.partial(_packed_forward, weight=weight, packed=_pack(weight), bias=m.bias)
        for group in groups:
            shared = _SharedInput(group)
            for member, m in enumerate(group):
                m.forward = functools.partial(shared.forward, member=member)
        yield len(linears)
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)  # the class's forward again
