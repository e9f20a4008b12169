"""Sampled-token logprobs and entropy straight from hidden states, chunk by chunk through the output head.

The full logits of an update are (rows, vocabulary): with Qwen2.5's 151,936-token vocabulary and 8k
completion tokens that is 4.6 GiB in fp32, and a softmax's backward keeps several such tensors. Here
no more than `chunk_rows` rows of logits exist at any time, in forward or backward: the forward keeps
only each row's log-normaliser (and entropy), and the backward recomputes one chunk of logits at a time
and turns it straight into the gradients of the hidden states and the head weight (as Liger's fused
linear losses do). Tensors in, tensors out; no model inside (r1kit.forward puts it in the model's head).

Per row, with z = (h W^T + b) / temperature over the vocabulary, p = softmax(z), lse = logsumexp(z):
    logprob = z[target] - lse                     d/dz = onehot(target) - p
    entropy = lse - sum_v p_v z_v                 d/dz = -p * (log p + entropy)
"""

from __future__ import annotations

import torch

# Elements of one chunk's fp32 logits (128 MiB): chunk_rows = this // vocabulary, at least 1 row.
CHUNK_ELEMENTS = 2**25

# On a CPU, PyTorch's bf16/fp16 matmuls run oneDNN kernels compiled for each shape, and an RL step's
# token count is new every step, so each update compiles its matmuls anew. A row count that is a
# multiple of 32 compiles in about half the time and runs as fast: measured on this project's 2-core CPU
# (bf16, AMX), a layer's forward, weight-gradient and input-gradient kernels 1.2 / 0.5 / 1.0 ms against
# 2.0 / 2.1 / 1.3 ms, the head's weight-gradient addmm 1.0-1.1 ms against 4.6-5.5 ms. So there the
# matmuls of an update get row counts that are multiples of this: the head's rows here, the layers'
# positions in r1kit.forward. fp32 on a CPU (MKL) and GPUs compile nothing per shape: no padding there.
MATMUL_ROW_MULTIPLE = 32


def matmul_row_multiple(weight: torch.Tensor) -> int:
    """MATMUL_ROW_MULTIPLE where matmuls with `weight` run kernels compiled per shape (bf16/fp16 on a CPU), else 1."""
    compiled = weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16)
    return MATMUL_ROW_MULTIPLE if compiled else 1


def round_up_rows(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple


def default_chunk_rows(vocab_size: int, multiple: int = 1) -> int:
    """Rows of one chunk: CHUNK_ELEMENTS // vocabulary, down to a multiple of `multiple` where that leaves one."""
    rows = max(1, CHUNK_ELEMENTS // vocab_size)
    return rows - rows % multiple if rows >= multiple else rows


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """(m, H) hidden, (V, H) weight, (V,) bias -> (m, V) temperature-scaled logits in float32 (float64
    for a float64 head). The product runs in the weight's dtype, as the model's own head would; the
    rest is in place, so one (m, V) buffer is made (two for a half-precision head)."""
    logits = hidden.to(weight.dtype) @ weight.t()
    if bias is not None:
        logits.add_(bias)
    logits = logits.to(torch.promote_types(weight.dtype, torch.float32))
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedHeadScores(torch.autograd.Function):
    """(M, H) hidden, (V, H) weight, (V,) bias or None, (M,) targets -> (M,) logprobs, (M,) entropy."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_rows, with_entropy):
        rows = hidden.shape[0]
        dtype = torch.promote_types(weight.dtype, torch.float32)
        logprobs, entropy, lse = (torch.zeros(rows, dtype=dtype, device=hidden.device) for _ in range(3))
        for s in range(0, rows, chunk_rows):
            z = _chunk_logits(hidden[s:s + chunk_rows], weight, bias, temperature)  # (m, V)
            top = z.max(dim=-1, keepdim=True).values  # (m, 1)
            target_logit = z.gather(-1, targets[s:s + chunk_rows, None])  # (m, 1)
            shifted = z.sub_(top)  # (m, V) z - max, in z's buffer
            e = shifted.exp()  # (m, V)
            total = e.sum(-1, keepdim=True)  # (m, 1)
            chunk_lse = (top + total.log()).squeeze(-1)  # (m,)
            lse[s:s + chunk_rows] = chunk_lse
            logprobs[s:s + chunk_rows] = target_logit.squeeze(-1) - chunk_lse
            if with_entropy:  # entropy = log(total) - sum_v p_v (z_v - max), p = e / total
                entropy[s:s + chunk_rows] = (total.log() - e.mul_(shifted).sum(-1, keepdim=True) / total).squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        ctx.set_materialize_grads(False)  # an output nobody differentiates gets None, not a zero tensor
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias and bias is not None else None
        step = ctx.chunk_rows
        for s in range(0, hidden.shape[0], step):
            h = hidden[s:s + step]
            grad_z = _chunk_logit_grad(_chunk_logits(h, weight, bias, ctx.temperature), lse[s:s + step],
                                       targets[s:s + step], entropy[s:s + step],
                                       None if grad_logprobs is None else grad_logprobs[s:s + step],
                                       None if grad_entropy is None else grad_entropy[s:s + step])
            if ctx.temperature != 1.0:
                grad_z.div_(ctx.temperature)
            grad_z = grad_z.to(weight.dtype)  # d/d(h W^T + b)
            if need_hidden:
                grad_hidden[s:s + step] = (grad_z @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight.addmm_(grad_z.t(), h.to(weight.dtype))
            if grad_bias is not None:
                grad_bias += grad_z.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _chunk_logit_grad(z: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, entropy: torch.Tensor,
                      grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None) -> torch.Tensor:
    """d(loss)/dz for one chunk, computed in z's buffer (plus one more when the entropy has a gradient):
    z (m, V) float32 logits; lse, targets, entropy and the incoming gradients (m,); None contributes nothing."""
    log_p = z.sub_(lse[:, None])  # (m, V)
    p = log_p.exp()
    if grad_entropy is not None:  # -g_H * p * (log p + H), in log_p's buffer
        entropy_term = log_p.add_(entropy[:, None]).mul_(p).mul_(-grad_entropy[:, None])
    grad_z = p  # -g_lp * p + g_lp at the target, in p's buffer
    if grad_logprobs is not None:
        grad_z.mul_(-grad_logprobs[:, None]).scatter_add_(-1, targets[:, None], grad_logprobs[:, None])
    else:
        grad_z.zero_()
    if grad_entropy is not None:
        grad_z.add_(entropy_term)
    return grad_z


def chunked_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 temperature: float = 1.0, bias: torch.Tensor | None = None,
                                 with_entropy: bool = True, entropy_grad: bool = False,
                                 chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprob of each target token and entropy of each position's next-token distribution.

    hidden (..., H) final hidden states; weight (V, H) the output head (tied or not); bias (V,) or None;
    targets (...) token ids -> logprobs (...) float32, entropy (...) float32 or None (unless with_entropy).
    Equal to log_softmax / entropy of the full (..., V) logits (h W^T + b) / temperature, gradients
    included, without ever holding more than chunk_rows x V logits. The entropy is detached unless
    entropy_grad (logging needs no gradient; an entropy bonus does).
    """
    shape = targets.shape
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    n, multiple = flat_targets.shape[0], matmul_row_multiple(weight)
    extra = round_up_rows(n, multiple) - n  # zero rows (target 0) whose results are dropped: their gradient is 0
    if extra:
        flat_hidden = torch.nn.functional.pad(flat_hidden, (0, 0, 0, extra))
        flat_targets = torch.nn.functional.pad(flat_targets, (0, extra))
    rows = chunk_rows or default_chunk_rows(weight.shape[0], multiple)
    logprobs, entropy = _ChunkedHeadScores.apply(flat_hidden, weight, bias, flat_targets, float(temperature), rows,
                                                 with_entropy)
    logprobs, entropy = logprobs[:n], entropy[:n]
    if not with_entropy:
        return logprobs.reshape(shape), None
    entropy = entropy if entropy_grad else entropy.detach()
    return logprobs.reshape(shape), entropy.reshape(shape)
