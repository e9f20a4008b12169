"""The GRPO family's math against hand-computed values, loop-versus-vectorised references, invariants,
and a gradient check on a toy categorical policy (the arithmetic is in the comments)."""

import math

import pytest
import torch

from r1kit.algo.advantages import compute_advantages, leave_one_out_baseline, reward_scale
from r1kit.algo.filters import informative_groups, keep_rows
from r1kit.algo.loss import (AGGREGATIONS, aggregate, clipped_surrogate, importance_ratio, kl_k1, kl_k2, kl_k3,
                             logprobs_and_entropy, policy_loss, truncated_is_weights)

E = math.e
EPS = 1e-4  # ADVANTAGE_EPS


# ---------------------------------------------------------------- advantages by hand


def test_rloo_by_hand():
    # group [1, 0, 0, 1]: the others' means are [1/3, 2/3, 2/3, 1/3] -> r - them = [2/3, -2/3, -2/3, 2/3]
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, "rloo", "none")
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_batch_scale_by_hand():
    # rewards [1,0,0,1, 1,1,1,1]: group-centred [.5,-.5,-.5,.5, 0,0,0,0]
    # batch mean 6/8 = .75; squared deviations .0625+.5625+.5625+.0625+4*.0625 = 1.5; unbiased var 1.5/7
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = 0.5 / (math.sqrt(1.5 / 7) + EPS)
    torch.testing.assert_close(compute_advantages(rewards, 4, "grpo", "batch"),
                               torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    # group scale: group 1 std sqrt(1/3); group 2 std 0 -> its advantages stay 0
    g = 0.5 / (math.sqrt(1 / 3) + EPS)
    torch.testing.assert_close(compute_advantages(rewards, 4, "grpo", "group"),
                               torch.tensor([g, -g, -g, g, 0, 0, 0, 0]))


def _loop_advantages(rewards: list[float], G: int, estimator: str, scale: str) -> list[float]:
    """Plain-Python reference: one completion at a time."""
    n = len(rewards)
    batch_mean = sum(rewards) / n
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in rewards) / (n - 1))
    out = []
    for i, r in enumerate(rewards):
        group = rewards[(i // G) * G:(i // G + 1) * G]
        mean = sum(group) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
        baseline = mean if estimator == "grpo" else (sum(group) - r) / (G - 1)
        divisor = {"group": std + EPS, "batch": batch_std + EPS, "none": 1.0}[scale]
        out.append((r - baseline) / divisor)
    return out


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_loop_equals_vectorised_and_sum_to_zero(estimator, scale):
    rewards = torch.rand(7 * 5, generator=torch.Generator().manual_seed(3)).round(decimals=1)
    rewards[5:10] = 0.5  # one zero-variance group
    adv = compute_advantages(rewards, 5, estimator, scale)
    torch.testing.assert_close(adv, torch.tensor(_loop_advantages(rewards.tolist(), 5, estimator, scale)))
    torch.testing.assert_close(adv.view(7, 5).sum(1), torch.zeros(7), atol=1e-5, rtol=0)
    assert torch.all(adv[5:10] == 0)


def test_rloo_is_grpo_centring_times_g_over_g_minus_1():
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(leave_one_out_baseline(rewards, 4),
                               compute_advantages(rewards, 4, "grpo", "none") * 4 / 3)


def test_unknown_estimator_and_scale_fail():
    with pytest.raises(ValueError, match="advantage estimator"):
        compute_advantages(torch.zeros(4), 2, "ppo", "group")
    with pytest.raises(ValueError, match="reward scale"):
        reward_scale(torch.zeros(4), 2, "global")


# ---------------------------------------------------------------- filters


def test_filters_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.6])  # group stds: 0, 0.707, 0.0707
    adv = torch.tensor([0.0, 0.0, -1.0, 1.0, -1.0, 1.0])
    truncated = torch.tensor([False, False, False, True, False, False])
    assert informative_groups(rewards, 2, None).tolist() == [False, True, True]
    assert informative_groups(rewards, 2, 0.1).tolist() == [False, True, False]  # ReasonLLM's 0.1
    assert keep_rows(rewards, adv, truncated, 2).tolist() == [True] * 6  # nothing asked: keep all
    assert keep_rows(rewards, adv, truncated, 2, min_group_std=0.0).tolist() == [False, False, True, True, True, True]
    assert keep_rows(rewards, adv, truncated, 2, min_group_std=0.1).tolist() == [False, False, True, True, False, False]
    assert keep_rows(rewards, adv, truncated, 2, drop_negative_advantages=True).tolist() == \
        [True, True, False, True, False, True]
    assert keep_rows(rewards, adv, truncated, 2, mask_truncated=True).tolist() == [True, True, True, False, True, True]


# ---------------------------------------------------------------- pieces of the loss by hand


def test_kl_estimators_by_hand():
    # lp = [0, 0], ref = [0, log 2]: k1 = lp - ref = [0, -log 2]; k2 = (log 2)^2 / 2; k3 = 2 - log 2 - 1
    lp, ref = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(2)]])
    torch.testing.assert_close(kl_k1(lp, ref), torch.tensor([[0.0, -math.log(2)]]))
    torch.testing.assert_close(kl_k2(lp, ref), torch.tensor([[0.0, math.log(2) ** 2 / 2]]))
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([[0.0, 1 - math.log(2)]]))


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)  # (6/3 + 4/1) / 2
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.5)  # 10 / 4 tokens
    assert aggregate(values, mask, "local_token_mean").item() == pytest.approx(2.5)
    assert aggregate(values, mask, "seq_mean_token_sum_norm", max_len=4).item() == pytest.approx(1.25)  # (6/4+4/4)/2
    assert aggregate(values, mask, "seq_mean_token_sum").item() == pytest.approx(5.0)  # (6 + 4) / 2 (LUSPO)
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate(values, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(values, mask, "sum")


def _loop_aggregate(values, mask, mode, max_len):
    rows = [[v for v, m in zip(vr, mr) if m] for vr, mr in zip(values.tolist(), mask.tolist())]
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / max(len(r), 1) for r in rows) / len(rows)
    if mode in ("token_mean", "local_token_mean"):
        return sum(sum(r) for r in rows) / max(sum(len(r) for r in rows), 1)
    if mode == "seq_mean_token_sum":
        return sum(sum(r) for r in rows) / len(rows)
    return sum(sum(r) / max_len for r in rows) / len(rows)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_aggregation_loop_equals_vectorised(mode):
    g = torch.Generator().manual_seed(5)
    values = torch.randn(6, 9, generator=g)
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    mask = (torch.arange(9) < lengths.unsqueeze(1)).long()
    assert aggregate(values, mask, mode, max_len=9).item() == pytest.approx(_loop_aggregate(values, mask, mode, 9),
                                                                             rel=1e-5)


def test_token_ratio_will_be_e():
    # logprobs - old = 1 at every token -> ratio [e, e, e]
    lp = torch.tensor([[0.5, -1.0, -2.0]])
    torch.testing.assert_close(importance_ratio(lp, lp - 1, torch.ones(1, 3)), torch.full((1, 3), E))


def test_sequence_ratio_is_exp_of_the_mean_log_ratio():
    # log ratios [0.1, 0.3, (padding 5.0)] -> mean over real tokens 0.2 -> [e^0.2, e^0.2, e^0.2]
    lp = torch.tensor([[0.1, 0.3, 5.0]])
    ratio = importance_ratio(lp, torch.zeros(1, 3), torch.tensor([[1, 1, 0]]), "sequence")
    torch.testing.assert_close(ratio, torch.full((1, 3), math.exp(0.2)))


def test_clipped_surrogate_by_hand():
    # eps_low 0.2, eps_high 0.28; ratios [e, 1/e] for A = +1 and A = -1
    ratio = torch.tensor([[E, 1 / E], [E, 1 / E]])
    adv = torch.tensor([1.0, -1.0])
    loss, clipped, dual = clipped_surrogate(ratio, adv, 0.2, 0.28)
    # A=+1: -min(e, 1.28) = -1.28 (clipped); -min(1/e, 0.8) = -1/e (not clipped: pessimistic branch)
    # A=-1: -min(-e, -1.28) = e (not clipped);  -min(-1/e, -0.8) = 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -1 / E], [E, 0.8]]))
    assert clipped.tolist() == [[True, False], [False, True]] and not dual.any()
    # dual clip c = 2: the A = -1 token with ratio e has loss e > 2 = -c*A -> capped at 2
    loss, _, dual = clipped_surrogate(ratio, adv, 0.2, 0.28, dual_clip=2.0)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -1 / E], [2.0, 0.8]]))
    assert dual.tolist() == [[False, False], [True, False]]


def test_truncated_is_weights_by_hand():
    # old - engine = [0, log 2, log 5] -> weights [1, 2, 5] -> truncated at C = 2 -> [1, 2, 2]
    old = torch.zeros(1, 3)
    engine = torch.tensor([[0.0, -math.log(2), -math.log(5)]])
    torch.testing.assert_close(truncated_is_weights(old, engine, 2.0), torch.tensor([[1.0, 2.0, 2.0]]))


def test_entropy_by_hand():
    # logits [0, log 3] -> p = [1/4, 3/4] -> H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623; uniform over 4 -> ln 4
    logits = torch.tensor([[[0.0, math.log(3), -1e9, -1e9], [0.0, 0.0, 0.0, 0.0]]])
    logp, ent = logprobs_and_entropy(logits, torch.tensor([[1, 2]]))
    torch.testing.assert_close(logp, torch.tensor([[math.log(0.75), math.log(0.25)]]))
    torch.testing.assert_close(ent, torch.tensor([[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(4)]]))
    assert not ent.requires_grad


# ---------------------------------------------------------------- invariants of the whole loss


def _random_case(seed=0, N=6, T=5):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(N, T, generator=g) - 2).requires_grad_()
    mask = (torch.arange(T) < torch.tensor([5, 3, 1, 4, 5, 2])[:N].unsqueeze(1)).float()
    adv = torch.randn(N, generator=g)
    return lp, mask, adv


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_on_policy_gradient_is_reinforce(mode, level):
    """mu = 1: old = logprobs.detach(), so the gradient equals that of -agg(A * logprobs)."""
    lp, mask, adv = _random_case()
    loss, stats = policy_loss(lp, lp.detach(), adv, mask, agg=mode, level=level, max_len=5, epsilon=3e-4)
    (grad,) = torch.autograd.grad(loss, lp)
    if level == "token":
        reinforce = aggregate(-adv.unsqueeze(1) * lp, mask, mode, 5)
    else:  # GSPO: the per-sequence mean log-likelihood carries the gradient, spread over the sequence's tokens
        seq = (lp * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        reinforce = aggregate((-adv.unsqueeze(1) * seq).expand_as(lp), mask, mode, 5)
    (expected,) = torch.autograd.grad(reinforce, lp)
    torch.testing.assert_close(grad, expected)
    assert stats.ratio_mean == pytest.approx(1.0) and stats.clip_fraction == 0.0


def test_clipping_stops_the_gradient_exactly_where_the_papers_say():
    # one token per completion; ratios around the clip range, both advantage signs; eps 0.2 / 0.28, dual clip 3
    ratios = torch.tensor([0.5, 0.79, 0.81, 1.0, 1.27, 1.29, 2.9, 3.1])
    lp_old = torch.zeros(16, 1)
    lp = torch.log(torch.cat([ratios, ratios])).unsqueeze(1).requires_grad_()
    adv = torch.cat([torch.ones(8), -torch.ones(8)])
    loss, _ = policy_loss(lp, lp_old, adv, torch.ones(16, 1), epsilon=0.2, epsilon_high=0.28, dual_clip=3.0,
                          agg="token_mean")
    (grad,) = torch.autograd.grad(loss, lp)
    r = torch.cat([ratios, ratios])
    # PPO: A > 0 stops above 1 + eps_high; A < 0 stops below 1 - eps_low; dual clip: A < 0 stops above c
    stopped = ((adv > 0) & (r > 1.28)) | ((adv < 0) & (r < 0.8)) | ((adv < 0) & (r > 3.0))
    assert (grad.squeeze(1) == 0).tolist() == stopped.tolist()


def test_zero_advantage_rows_contribute_no_gradient():
    lp, mask, _ = _random_case()
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])  # a zero-variance group: rows 2-5
    loss, _ = policy_loss(lp, lp.detach() - 0.1, adv, mask, dual_clip=3.0, agg="token_mean")
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.all(grad[2:] == 0) and torch.any(grad[:2] != 0)


def test_entropy_bonus_needs_a_differentiable_entropy():
    lp, mask, adv = _random_case()
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(lp, lp.detach(), adv, mask, entropy=torch.ones_like(lp), entropy_coef=0.1)


# ---------------------------------------------------------------- toy categorical policy: autograd = analytic


def _toy_policy(seed=0, K=5, lengths=(3, 1, 4, 2)):
    """A context-free categorical policy over K actions with logits theta; sequences of sampled actions."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g).requires_grad_()
    theta_old = (theta.detach() + 0.3 * torch.randn(K, generator=g))
    T = max(lengths)
    actions = torch.randint(K, (len(lengths), T), generator=g)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).float()
    adv = torch.tensor([1.5, -0.5, -2.0, 1.0][:len(lengths)])
    return theta, theta_old, actions, mask, adv


def _analytic_gradient(theta, theta_old, actions, mask, adv, *, agg, level, eps_low, eps_high, max_len,
                       beta=0.0, ref_theta=None, kl="k3"):
    """The policy-gradient expression, token by token in plain loops.

    d log pi(a) / d theta = onehot(a) - pi. A token on the unclipped branch contributes
    -A * r * d log pi(a) (token level) or -A * s_i * mean_t d log pi(a_t) (GSPO, per sequence);
    a clipped one contributes 0. Then each token's term is weighted by its aggregation weight.
    """
    pi = torch.softmax(theta.detach(), 0)
    logp, logp_old = torch.log_softmax(theta.detach(), 0), torch.log_softmax(theta_old, 0)
    N, T = actions.shape
    lengths = mask.sum(1).long().tolist()
    total_tokens = sum(lengths)
    grad = torch.zeros_like(pi)

    def dlogp(a):
        return torch.nn.functional.one_hot(torch.tensor(a), len(pi)).float() - pi

    def weight(i):
        return {"seq_mean_token_mean": 1 / (N * lengths[i]), "token_mean": 1 / total_tokens,
                "local_token_mean": 1 / total_tokens, "seq_mean_token_sum_norm": 1 / (N * max_len)}[agg]

    for i in range(N):
        A = adv[i].item()
        acts = actions[i, :lengths[i]].tolist()
        s = math.exp(sum((logp[a] - logp_old[a]).item() for a in acts) / len(acts))
        for a in acts:
            r = s if level == "sequence" else math.exp((logp[a] - logp_old[a]).item())
            unclipped = not ((A > 0 and r > 1 + eps_high) or (A < 0 and r < 1 - eps_low))
            if unclipped:
                d = sum((dlogp(b) for b in acts), torch.zeros_like(pi)) / len(acts) if level == "sequence" else dlogp(a)
                grad += weight(i) * (-A * r) * d
            if beta:
                x = (logp[a] - torch.log_softmax(ref_theta, 0)[a]).item()  # log pi - log ref
                dk = {"k1": 1.0, "k2": x, "k3": 1 - math.exp(-x)}[kl]
                grad += weight(i) * beta * dk * dlogp(a)
    return grad


@pytest.mark.parametrize("agg,level,eps_low,eps_high", [
    ("seq_mean_token_mean", "token", 0.2, 0.2),  # grpo
    ("seq_mean_token_sum_norm", "token", 0.2, 0.2),  # dr_grpo
    ("token_mean", "token", 0.2, 0.28),  # dapo
    ("local_token_mean", "token", 0.2, 0.2),  # bnpo
    ("seq_mean_token_mean", "sequence", 0.05, 0.08),  # gspo (a wider range so some sequences are not clipped)
    ("token_mean", "token", 0.05, 0.05),  # tight clip: many tokens clipped
])
def test_toy_categorical_policy_autograd_equals_analytic(agg, level, eps_low, eps_high):
    theta, theta_old, actions, mask, adv = _toy_policy()
    logp = torch.log_softmax(theta, 0)[actions]  # (N, T)
    old = torch.log_softmax(theta_old, 0)[actions]
    loss, _ = policy_loss(logp, old, adv, mask, epsilon=eps_low, epsilon_high=eps_high, level=level, agg=agg,
                          max_len=6)
    (grad,) = torch.autograd.grad(loss, theta)
    expected = _analytic_gradient(theta, theta_old, actions, mask, adv, agg=agg, level=level, eps_low=eps_low,
                                  eps_high=eps_high, max_len=6)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_toy_categorical_policy_kl_gradient(kl):
    theta, theta_old, actions, mask, adv = _toy_policy(seed=1)
    ref_theta = theta_old + 0.5
    logp = torch.log_softmax(theta, 0)[actions]
    ref = torch.log_softmax(ref_theta, 0)[actions]
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, beta=0.1, ref_logprobs=ref, kl_estimator=kl)
    (grad,) = torch.autograd.grad(loss, theta)
    expected = _analytic_gradient(theta, theta.detach(), actions, mask, adv, agg="seq_mean_token_mean",
                                  level="token", eps_low=0.2, eps_high=0.2, max_len=4, beta=0.1,
                                  ref_theta=ref_theta, kl=kl)
    torch.testing.assert_close(grad, expected)
