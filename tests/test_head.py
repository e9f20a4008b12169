"""Chunked logprobs and entropy through the output head (r1kit.algo.head) equal the full-logits computation:
values and gradients with respect to the hidden states, the head weight and its bias, in fp32 to 1e-5
(absolute, plus 1e-5 relative: a weight gradient of size 5 sums its rows in another order)."""

import pytest
import torch

from r1kit.algo.head import chunked_logprobs_and_entropy
from r1kit.algo.loss import logprobs_and_entropy


def full(hidden, weight, targets, temperature, bias=None):
    """The reference: (N, T, V) logits, then the row-wise log-softmax and entropy r1kit used before."""
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return logprobs_and_entropy(logits / temperature, targets, with_entropy=True, entropy_grad=True)


def inputs(seed=0, N=3, T=5, H=8, V=11, bias=False):
    # logits of size ~5 at most: at 20 both computations are only 1e-5 from the float64 truth (measured)
    g = torch.Generator().manual_seed(seed)
    hidden = (0.5 * torch.randn(N, T, H, generator=g)).requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=g)).requires_grad_()
    b = torch.randn(V, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, V, (N, T), generator=g)
    return hidden, weight, b, targets


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk_rows", [1, 4, 15, 1000])  # one row, uneven chunks, exactly all rows, one chunk
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_full_logits(chunk_rows, temperature, bias):
    hidden, weight, b, targets = inputs(bias=bias)
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)  # arbitrary upstream gradients

    ref_lp, ref_ent = full(hidden, weight, targets, temperature, b)
    lp, ent = chunked_logprobs_and_entropy(hidden, weight, targets, temperature, b, entropy_grad=True,
                                           chunk_rows=chunk_rows)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)

    expected = grads((ref_lp * a).sum() + (ref_ent * c).sum(), (hidden, weight, b))
    got = grads((lp * a).sum() + (ent * c).sum(), (hidden, weight, b))
    for e, x in zip(expected, got):
        torch.testing.assert_close(x, e, atol=1e-5, rtol=1e-5)


def test_logprob_gradient_alone_and_detached_entropy():
    hidden, weight, _, targets = inputs(seed=2)
    ref_lp, _ = full(hidden, weight, targets, 1.3)
    lp, ent = chunked_logprobs_and_entropy(hidden, weight, targets, 1.3, chunk_rows=2)
    assert not ent.requires_grad  # logging needs no graph through the entropy
    for e, x in zip(grads(ref_lp.sum(), (hidden, weight)), grads(lp.sum(), (hidden, weight))):
        torch.testing.assert_close(x, e, atol=1e-5, rtol=1e-5)
    lp_only, none = chunked_logprobs_and_entropy(hidden, weight, targets, 1.3, with_entropy=False)
    assert none is None
    torch.testing.assert_close(lp_only, lp)


def test_tied_weight_sums_both_gradients():
    # a tied head is the embedding matrix: the head's gradient adds to the embedding's, as with full logits
    hidden, weight, _, targets = inputs(seed=3)
    ref_lp, _ = full(hidden + weight[targets], weight, targets, 1.0)  # embedding lookup with the same matrix
    lp, _ = chunked_logprobs_and_entropy(hidden + weight[targets], weight, targets, chunk_rows=3)
    (expected,), (got,) = grads(ref_lp.sum(), (weight,)), grads(lp.sum(), (weight,))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gradcheck_in_double():
    hidden, weight, b, targets = inputs(seed=4, N=2, T=3, H=4, V=6, bias=True)
    hidden, weight, b = (t.detach().double().requires_grad_() for t in (hidden, weight, b))

    def f(h, w, bb):
        lp, ent = chunked_logprobs_and_entropy(h, w, targets, 0.8, bb, entropy_grad=True, chunk_rows=4)
        return lp, ent

    assert torch.autograd.gradcheck(f, (hidden, weight, b))


def test_hand_computed_values():
    # one row, hidden = [1], weight column [0, ln 3]: logits [0, ln 3] -> p = [1/4, 3/4]
    import math

    hidden, weight = torch.tensor([[1.0]]), torch.tensor([[0.0], [math.log(3)]])
    lp, ent = chunked_logprobs_and_entropy(hidden, weight, torch.tensor([0]))
    torch.testing.assert_close(lp, torch.tensor([math.log(0.25)]))
    torch.testing.assert_close(ent, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]))


def test_a_bf16_cpu_head_multiplies_row_counts_that_are_multiples_of_32(monkeypatch):
    # oneDNN compiles a bf16 CPU matmul with a row count that is a multiple of 32 in about half the time
    # (r1kit.algo.head.MATMUL_ROW_MULTIPLE): 15 rows are scored as 32, the 17 extra ones dropped, with the
    # values and gradients of the 15 rows alone (bitwise on this CPU); fp32 (MKL, nothing compiled per
    # shape) is not padded
    from r1kit.algo import head

    seen = []
    original = head._chunk_logits
    monkeypatch.setattr(head, "_chunk_logits", lambda h, *a: seen.append(h.shape[0]) or original(h, *a))
    hidden, weight, b, targets = inputs(seed=5, bias=True)  # 3 x 5 = 15 rows
    upstream = torch.linspace(-1, 1, 15).view(3, 5), torch.linspace(0.5, -0.3, 15).view(3, 5)

    def scores(dtype):
        seen.clear()
        h, w, bb = (t.detach().to(dtype).requires_grad_() for t in (hidden, weight, b))
        lp, ent = chunked_logprobs_and_entropy(h, w, targets, 0.7, bb, entropy_grad=True)
        assert lp.shape == ent.shape == (3, 5)
        (lp * upstream[0] + ent * upstream[1]).sum().backward()  # the backward's chunk is padded too
        return seen[:], [lp, ent, h.grad, w.grad, bb.grad]

    assert scores(torch.float32)[0] == [15, 15]
    rows, padded = scores(torch.bfloat16)
    assert rows == [32, 32]  # forward, backward
    monkeypatch.setattr(head, "matmul_row_multiple", lambda weight: 1)
    rows, unpadded = scores(torch.bfloat16)
    assert rows == [15, 15]
    assert all(torch.equal(p, u) for p, u in zip(padded, unpadded))
    assert head.default_chunk_rows(151_936, 32) == 192  # 220 rows of Qwen2.5's vocabulary, down to a multiple of 32
    assert head.default_chunk_rows(151_936) == 220 and head.default_chunk_rows(2**26, 32) == 1
