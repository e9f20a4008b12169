"""The seeded sampler: exact samples of the processed distribution, and randomness that belongs to the completion."""

import math

import torch

from r1kit.rollout.hf import HFEngine
from r1kit.rollout.sampling import SeededSampler, filter_logits, gumbel_noise, row_seed, splitmix64
from r1kit.types import SamplingParams


def test_splitmix64_matches_the_reference_values():
    # splitmix64 from state 0: the first outputs of Vigna's generator (seed 0, x += golden each call)
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_gumbel_noise_is_a_pure_function_of_seed_position_and_token():
    seeds = torch.tensor([row_seed(7, 0), row_seed(7, 1)])
    a = gumbel_noise(seeds, 3, 50)
    assert torch.equal(a, gumbel_noise(seeds, 3, 50))
    assert torch.equal(a[1:], gumbel_noise(seeds[1:], 3, 50))  # a row's noise ignores the other rows
    assert not torch.equal(a, gumbel_noise(seeds, 4, 50)) and not torch.equal(a[0], a[1])
    # standard Gumbel: mean = Euler-Mascheroni constant 0.5772, variance pi^2/6 = 1.645
    big = gumbel_noise(torch.arange(200), 0, 1000)
    assert abs(big.mean().item() - 0.5772) < 0.01 and abs(big.var().item() - math.pi ** 2 / 6) < 0.03


def test_samples_follow_the_temperature_scaled_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    n = 20000
    sampler = SeededSampler([row_seed(1, j) for j in range(n)], temperature=1.0)
    out = sampler(None, logits.expand(n, 3).clone())
    counts = torch.bincount(out.argmax(-1), minlength=3).float() / n
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)  # ~4 standard errors
    chosen = out.argmax(-1)
    torch.testing.assert_close(sampler.logprobs[0], torch.log(torch.tensor([0.5, 0.3, 0.2]))[chosen])
    # temperature 2: p ~ sqrt([0.5, 0.3, 0.2]) normalised
    hot = SeededSampler([row_seed(2, j) for j in range(n)], temperature=2.0)
    counts = torch.bincount(hot(None, logits.expand(n, 3).clone()).argmax(-1), minlength=3).float() / n
    expected = torch.tensor([0.5, 0.3, 0.2]).sqrt() / torch.tensor([0.5, 0.3, 0.2]).sqrt().sum()
    assert torch.allclose(counts, expected, atol=0.015)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    inf = float("-inf")
    kept = lambda out: (out > inf).tolist()[0]  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [False, True, False, True]
    assert kept(filter_logits(logits, top_p=0.5)) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(filter_logits(logits, top_p=0.6)) == [False, True, False, True]  # 0.5 + 0.25
    assert kept(filter_logits(logits, top_p=0.01)) == [False, True, False, False]  # the top token always stays
    assert kept(filter_logits(logits, top_k=0, top_p=1.0)) == [True] * 4


def test_a_prompt_samples_the_same_completions_in_any_batch(small_model, tiny_tokenizer):
    """What 1 process samples for prompts [a, b] equals what 2 processes sample for [a] and [b] (prompt_offset)."""
    from r1kit.data.templates import build_messages, encode_prompt

    a, b = (encode_prompt(tiny_tokenizer, build_messages(q)) for q in ("1+2?", "13+4+5 is?"))
    engine = HFEngine(small_model, tiny_tokenizer, generation_batch_size=3)  # batches cut across groups
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    together = engine.generate([a, b], 4, sampling)
    first = engine.generate([a], 4, sampling)
    second = engine.generate([b], 4, SamplingParams(max_new_tokens=12, temperature=1.0, seed=11, prompt_offset=1))
    assert [c.token_ids for c in together] == [c.token_ids for c in first + second]
    for x, y in zip(together, first + second):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(c.token_ids) for c in together}) > 2  # and they are samples, not copies


def test_numpy_and_torch_hashes_give_the_same_bits():
    """The CPU path hashes with numpy's uint64, other devices with torch's int64: the same bits for any seed."""
    from r1kit.rollout.sampling import _mix, _token_bits_numpy, _token_bits_torch

    seeds = torch.tensor([row_seed(s, j) for s in (0, 7, 2**40 + 3) for j in range(5)] + [-1, 2**63 - 1, -2**63])
    for position in (0, 1, 255, 10**6):
        base = _mix(seeds + position * 0x9E3779B9)
        assert torch.equal(_token_bits_numpy(base, 1000), _token_bits_torch(base, 1000))


def test_argmax_rows_equals_torch_argmax_with_ties_and_infinities():
    from r1kit.rollout.sampling import argmax_rows

    x = torch.randn(6, 1000, dtype=torch.float64)
    x[1, [3, 700]] = 50.0  # a tie: the first index wins
    x[2] = float("-inf")  # a row with nothing left
    x[3, :500] = float("-inf")
    for t in (x, x.float()):
        assert torch.equal(argmax_rows(t), torch.argmax(t, dim=-1))
    assert argmax_rows(x)[1].item() == 3 and argmax_rows(x).dtype == torch.int64
