"""The GRPO math against hand-computed values (torchtune style: the arithmetic is in the comments)."""

import math

import pytest
import torch

from r1kit.algo.advantages import group_advantages, zero_variance_groups
from r1kit.algo.loss import aggregate, kl_k3, policy_loss, selective_log_softmax


def test_group_advantages_by_hand():
    # group 1: rewards [1, 0, 0, 1] -> mean 0.5, unbiased std sqrt(1/3) = 0.57735
    # group 2: rewards [1, 1, 1, 1] -> mean 1, std 0 -> advantages all 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4, scale="group")
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    adv_none = group_advantages(rewards, group_size=4, scale="none")
    torch.testing.assert_close(adv_none, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_advantages_sum_to_zero_per_group():
    rewards = torch.rand(6 * 5, generator=torch.Generator().manual_seed(0))
    for scale in ("group", "none"):
        adv = group_advantages(rewards, 5, scale).view(6, 5)
        torch.testing.assert_close(adv.sum(1), torch.zeros(6), atol=1e-5, rtol=0)


def test_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]


def test_selective_log_softmax_matches_full():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1))
    index = torch.randint(7, (3, 5), generator=torch.Generator().manual_seed(2))
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, index), expected)


def test_kl_k3_by_hand():
    # delta = ref - lp = [0, log 2] -> k3 = [1-0-1, 2-log2-1] = [0, 1 - log 2]
    lp = torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[0.0, math.log(2)]])
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([[0.0, 1 - math.log(2)]]))


def test_aggregate_modes_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # per sequence: (1+2+3)/3 = 2 and 4/1 = 4 -> mean 3
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # all tokens: (1+2+3+4)/4 = 2.5
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(values, mask, "nope")


def test_policy_loss_on_policy_value_and_gradient_is_reinforce():
    # With old = logprobs.detach() the ratio is exactly 1: loss = -mean_seq(mean_tok(A)),
    # and d loss / d logprob_t = -A_i / (n_tokens_i * N): the REINFORCE gradient.
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = policy_loss(logprobs, logprobs.detach(), adv, mask, epsilon=0.2)
    # seq 1: -(2 + 2)/2 = -2 ; seq 2: -(-1)/1 = 1 ; mean = -0.5
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    expected = torch.tensor([[-2.0 / 2 / 2, -2.0 / 2 / 2], [1.0 / 1 / 2, 0.0]])
    torch.testing.assert_close(logprobs.grad, expected)
    assert stats.clip_fraction == 0.0 and stats.ratio_mean == pytest.approx(1.0)


def test_policy_loss_clipping_stops_gradient():
    # ratio = e^{0.5} = 1.6487 > 1 + 0.2 with A > 0: clipped, no gradient through that token.
    # ratio = e^{-0.5} = 0.6065 < 1 - 0.2 with A > 0: NOT clipped (min picks the unclipped term).
    old = torch.zeros(1, 2)
    logprobs = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss, stats = policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), epsilon=0.2)
    # token 1: -min(1.6487, 1.2) = -1.2 ; token 2: -min(0.6065, 0.8) = -0.6065 ; mean = -0.90327
    assert loss.item() == pytest.approx(-(1.2 + math.exp(-0.5)) / 2, rel=1e-6)
    loss.backward()
    # d/dlp of -ratio/2 = -ratio/2 for the unclipped token; 0 for the clipped one
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -math.exp(-0.5) / 2]]))
    assert stats.clip_fraction == pytest.approx(0.5)


def test_policy_loss_kl_term():
    # ratio 1, A = 0: the loss is beta * k3 alone. k3 with delta = log 2 is 1 - log 2.
    lp = torch.zeros(1, 1)
    ref = torch.tensor([[math.log(2)]])
    loss, stats = policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), beta=0.1, ref_logprobs=ref)
    assert loss.item() == pytest.approx(0.1 * (1 - math.log(2)))
    assert stats.kl == pytest.approx(1 - math.log(2))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), beta=0.1)


def test_zero_variance_group_contributes_no_gradient():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 3)
    logprobs = torch.randn(6, 4, requires_grad=True)
    loss, _ = policy_loss(logprobs, logprobs.detach(), adv, torch.ones(6, 4))
    loss.backward()
    assert torch.all(logprobs.grad[:3] == 0) and torch.any(logprobs.grad[3:] != 0)
