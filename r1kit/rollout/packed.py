"""bf16 linear layers that read prepacked weights while the HF engine generates on a CPU.

On a CPU, PyTorch computes a bf16 matmul with oneDNN, whose AMX / AVX-512 kernels read the weight in a
blocked layout: given an nn.Linear's plain (out, in) weight, every call first copies the whole weight into
that layout, then reads the copy. A decode step reads every weight once for a few rows, so that copy is
most of its memory traffic (SmolLM2-135M, 8 rows: one gate/up projection 280 -> 177 us per call with the
weight packed once, the lm_head 6.8 -> 2.5 ms). `packed_linears` packs each bf16 weight once per
generate call and routes the model's nn.Linear calls to the packed copy for its duration; the kernels
are the same, so for a decode step's few rows the outputs are bitwise the same (tests/test_packed.py).

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


def _packed_forward(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) computed from `packed`, weight's prepacked copy; x (..., in) -> (..., out)."""
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.numel() > PACKED_MAX_ROWS * x.shape[-1]:
        return F.linear(x, weight, bias)  # what nn.Linear does (and fails with, for a wrong dtype)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def onednn_bf16() -> bool:
    """Whether PyTorch computes bf16 matmuls on this CPU with oneDNN (the path packing speeds up)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch has the oneDNN bf16 packing ops and they give F.linear's outputs bitwise."""
    try:
        if not onednn_bf16():
            return False
        gen = torch.Generator().manual_seed(0)
        for out_features, in_features in ((48, 40), (512, 2048), (40, 1536)):
            weight = torch.randn(out_features, in_features, generator=gen).bfloat16()
            bias = torch.randn(out_features, generator=gen).bfloat16()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_MAX_ROWS)
            for shape in ((1, in_features), (3, 2, in_features), (PACKED_MAX_ROWS, in_features)):
                x = torch.randn(*shape, generator=gen).bfloat16()
                for b in (None, bias):
                    if not torch.equal(_packed_forward(x, weight, packed, b), F.linear(x, weight, b)):
                        return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):  # ops missing in this build, or refused
        return False


def packable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's plain nn.Linear layers (subclasses such as quantized or LoRA layers excluded; a LoRA
    layer's own base and adapter nn.Linear modules are included) whose weight is a bf16 CPU tensor."""
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.bfloat16 and (m.bias is None or m.bias.dtype == torch.bfloat16)]


@contextmanager
def packed_linears(model: torch.nn.Module):
    """Within: the model's bf16 CPU nn.Linear layers compute from weights packed on entry (one extra copy of
    those weights, freed on exit). Only for forwards without autograd and weights that do not change
    inside: the packed copy is a snapshot."""
    linears = packable_linears(model)
    if linears and not packing_available():  # probed only for a model with something to pack (its kernels cost memory)
        linears = []
    try:
        for m in linears:
            weight = m.weight.detach()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_MAX_ROWS)
            m.forward = functools.partial(_packed_forward, weight=weight, packed=packed, bias=m.bias)
        yield len(linears)
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)  # the class's forward again
