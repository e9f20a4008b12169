"""The registered policy objectives (CISPO, SAPO, the clip) against hand-computed values, the registry's
rules, and autograd against the analytic policy gradient on the toy categorical policy of test_algo_family."""

import math

import pytest
import torch

from r1kit.algo.loss import aggregate, policy_loss
from r1kit.algo.objectives import (OBJECTIVES, ObjectiveKnobs, cispo_objective, get_objective, register_objective,
                                   sapo_objective)
from test_algo_family import _random_case, _toy_policy


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_registry_rejects_duplicates_and_lists_names_on_a_miss():
    assert {"clip", "cispo", "sapo"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("cispo")(lambda *a: None)
    with pytest.raises(ValueError, match=r"unknown policy objective 'ppo'; expected one of \['cispo', 'clip', 'sapo'"):
        get_objective("ppo")


def test_cispo_by_hand():
    # cap = 1 + 4 = 5: weights sg(min(r, 5)) = 0.5, 1, 5; loss = -w * A * logprob with A = 2
    ratio = torch.tensor([[0.5, 1.0, 6.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    loss, clipped, dual = cispo_objective(ratio, logprobs, torch.tensor([2.0]), ObjectiveKnobs(epsilon_high=4.0))
    torch.testing.assert_close(loss, torch.tensor([[1.0, 4.0, 30.0]]))
    assert clipped.tolist() == [[False, False, True]] and not dual.any()
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -2.0, -10.0]]))  # -w * A: the capped token keeps a gradient


def test_cispo_gradient_flows_only_through_the_logprob():
    # the ratio is a function of the logprobs here; CISPO's weight is detached, so d loss / d lp = -w * A
    lp = torch.tensor([[-1.0, -0.2]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0]])
    ratio = torch.exp(lp - old)  # e^0.5 = 1.6487, e^1.8 = 6.0496 (capped at 5)
    loss, _, _ = cispo_objective(ratio, lp, torch.tensor([-1.0]), ObjectiveKnobs(epsilon_high=4.0))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([[math.exp(0.5), 5.0]]))


def test_sapo_by_hand():
    # A = 1 uses tau_pos = 1: gate(2) = 4 * sigmoid(1); A = -1 uses tau_neg = 1.05: gate(0.5) = 4/1.05 * sigmoid(-0.525)
    ratio = torch.tensor([[2.0], [0.5], [1.0]])
    adv = torch.tensor([1.0, -1.0, 3.0])
    loss, clipped, _ = sapo_objective(ratio, torch.zeros(3, 1), adv, ObjectiveKnobs())
    expected = [-4 * sigmoid(1.0), 4 / 1.05 * sigmoid(-0.525), -3 * 2.0]  # gate(1) = 4/tau * 1/2 = 2
    torch.testing.assert_close(loss.squeeze(1), torch.tensor(expected))
    assert not clipped.any()


def test_sapo_gate_gradient_is_4_s_1_minus_s_and_1_on_policy():
    ratio = torch.tensor([[1.0, 1.5, 3.0, 0.2]], dtype=torch.float64, requires_grad=True)
    knobs = ObjectiveKnobs(sapo_temperature_pos=2.0)
    loss, _, _ = sapo_objective(ratio, torch.zeros_like(ratio), torch.tensor([1.0], dtype=torch.float64), knobs)
    (grad,) = torch.autograd.grad(loss.sum(), ratio)
    s = [sigmoid(2.0 * (r - 1)) for r in (1.0, 1.5, 3.0, 0.2)]
    torch.testing.assert_close(grad, -torch.tensor([[4 * x * (1 - x) for x in s]], dtype=torch.float64))
    assert grad[0, 0].item() == pytest.approx(-1.0)  # at r = 1 SAPO's gradient is the clip's: -A
    assert torch.autograd.gradcheck(
        lambda r: sapo_objective(r, torch.zeros_like(r), torch.tensor([1.0, -1.0], dtype=torch.float64), knobs)[0],
        torch.rand(2, 3, dtype=torch.float64).add(0.5).requires_grad_())


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean"])
def test_on_policy_every_objective_is_reinforce(objective, agg):
    """mu = 1 (old = logprobs.detach()): ratio 1, and every objective's gradient is that of -agg(A * logprobs)."""
    lp, mask, adv = _random_case()
    loss, stats = policy_loss(lp, lp.detach(), adv, mask, agg=agg, objective=objective, epsilon_high=4.0)
    (grad,) = torch.autograd.grad(loss, lp)
    (expected,) = torch.autograd.grad(aggregate(-adv.unsqueeze(1) * lp, mask, agg), lp)
    torch.testing.assert_close(grad, expected)
    assert stats.clip_fraction == 0.0


def _analytic(theta, theta_old, actions, mask, adv, token_factor):
    """sum over tokens of token_factor(A, r) * d log pi(a)/d theta / total tokens (token_mean), in loops.

    d log pi(a) / d theta = onehot(a) - pi; token_factor is the loss's derivative in log pi at that token."""
    pi = torch.softmax(theta.detach(), 0)
    logp, logp_old = torch.log_softmax(theta.detach(), 0), torch.log_softmax(theta_old, 0)
    lengths = mask.sum(1).long().tolist()
    grad = torch.zeros_like(pi)
    for i, n in enumerate(lengths):
        for a in actions[i, :n].tolist():
            r = math.exp((logp[a] - logp_old[a]).item())
            onehot = torch.nn.functional.one_hot(torch.tensor(a), len(pi)).float()
            grad += token_factor(adv[i].item(), r) * (onehot - pi) / sum(lengths)
    return grad


@pytest.mark.parametrize("objective,token_factor", [
    # CISPO: d/dlogpi of -sg(min(r, cap)) * A * logpi = -min(r, cap) * A   (cap 1.2: some tokens capped)
    ("cispo", lambda A, r: -min(r, 1.2) * A),
    # SAPO: d/dlogpi of -(4/tau) sigmoid(tau (r-1)) A = -4 s (1-s) * r * A, tau = 1 (A > 0) or 1.05
    ("sapo", lambda A, r: -4 * sigmoid((1.0 if A > 0 else 1.05) * (r - 1))
     * (1 - sigmoid((1.0 if A > 0 else 1.05) * (r - 1))) * r * A),
])
def test_toy_categorical_policy_off_policy_gradient(objective, token_factor):
    theta, theta_old, actions, mask, adv = _toy_policy()
    logp = torch.log_softmax(theta, 0)[actions]  # (N, T)
    old = torch.log_softmax(theta_old, 0)[actions]
    loss, _ = policy_loss(logp, old, adv, mask, agg="token_mean", objective=objective, epsilon_high=0.2)
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(grad, _analytic(theta, theta_old, actions, mask, adv, token_factor),
                               rtol=1e-5, atol=1e-6)
