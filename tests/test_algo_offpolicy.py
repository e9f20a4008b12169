"""Off-policy corrections (r1kit.algo.offpolicy) against hand-computed values and loop references."""

import math

import pytest
import torch

from r1kit.algo.loss import truncated_is_weights
from r1kit.algo.offpolicy import (IS_MODES, corrections, high_entropy_mask, importance_weights, merge_statistics,
                                  off_policy_sequence_mask, quantile, sequence_sampler_kl)
from r1kit.config import AlgoCfg

L = math.log


def _case():
    """Row 0: ratios pi_old/pi_engine 1, 2, 3 (product 6); row 1: 0.5, 0.5 and padding (product 0.25)."""
    old = torch.tensor([[L(0.5), L(0.5), L(0.9)], [L(0.4), L(0.2), -7.0]])
    engine = torch.tensor([[L(0.5), L(0.25), L(0.3)], [L(0.8), L(0.4), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return old, engine, mask


@pytest.mark.parametrize("mode,cap,floor,expected", [
    ("token_truncate", 2.0, None, [[1, 2, 2], [0.5, 0.5, 1]]),
    ("token_truncate", 2.0, 0.6, [[1, 2, 2], [0.6, 0.6, 1]]),
    ("token_mask", 2.0, None, [[1, 2, 0], [0.5, 0.5, 1]]),
    ("token_mask", 2.0, 0.6, [[1, 2, 0], [0, 0, 1]]),
    ("token_mask", None, 0.6, [[1, 2, 3], [0, 0, 1]]),
    ("sequence_truncate", 2.0, None, [[2, 2, 2], [0.25, 0.25, 0.25]]),
    ("sequence_truncate", 2.0, 0.5, [[2, 2, 2], [0.5, 0.5, 0.5]]),
    ("sequence_mask", 2.0, None, [[0, 0, 0], [0.25, 0.25, 0.25]]),
    ("sequence_mask", 8.0, 0.5, [[6, 6, 6], [0, 0, 0]]),
])
def test_importance_weights_by_hand(mode, cap, floor, expected):
    old, engine, mask = _case()  # padding: weight exp(0) = 1 (token modes); it never reaches the loss
    torch.testing.assert_close(importance_weights(old, engine, mask, mode, cap, floor), torch.tensor(expected).float())


def test_token_truncate_is_the_existing_truncated_is_on_every_real_token():
    g = torch.Generator().manual_seed(0)
    old, engine = torch.randn(5, 7, generator=g) - 2, torch.randn(5, 7, generator=g) - 2
    mask = (torch.arange(7) < torch.tensor([7, 3, 1, 5, 6]).unsqueeze(1)).long()
    new = importance_weights(old, engine, mask, "token_truncate", 2.0)
    assert torch.equal(new[mask.bool()], truncated_is_weights(old, engine, 2.0)[mask.bool()])  # bitwise


def _loop_weights(old, engine, mask, mode, cap, floor):
    level, bound = mode.split("_")
    out = []
    for o_row, e_row, m_row in zip(old.tolist(), engine.tolist(), mask.tolist()):
        logs = [(o - e) * m for o, e, m in zip(o_row, e_row, m_row)]
        ratios = [math.exp(sum(logs))] * len(logs) if level == "sequence" else [math.exp(x) for x in logs]
        inside = [(cap is None or r <= cap) and (floor is None or r >= floor) for r in ratios]
        if bound == "truncate":
            out.append([min(max(r, floor if floor is not None else -1), cap if cap is not None else math.inf)
                        for r in ratios])
        else:
            out.append([r if ok else 0.0 for r, ok in zip(ratios, inside)])
    return torch.tensor(out)


@pytest.mark.parametrize("mode", IS_MODES)
@pytest.mark.parametrize("cap,floor", [(2.0, None), (1.5, 0.7), (None, 0.8)])
def test_importance_weights_loop_equals_vectorised(mode, cap, floor):
    g = torch.Generator().manual_seed(3)
    old = torch.randn(6, 5, generator=g) * 0.3 - 1
    engine = old + torch.randn(6, 5, generator=g) * 0.3
    mask = (torch.arange(5) < torch.tensor([5, 1, 3, 4, 2, 5]).unsqueeze(1)).long()
    torch.testing.assert_close(importance_weights(old, engine, mask, mode, cap, floor),
                               _loop_weights(old, engine, mask, mode, cap, floor), rtol=1e-5, atol=1e-6)


def test_importance_weights_are_detached_and_reject_unknown_modes():
    old, engine, mask = _case()
    assert not importance_weights(old.requires_grad_(), engine, mask, "sequence_mask", 8.0).requires_grad
    with pytest.raises(ValueError, match="unknown importance sampling mode 'seq'; expected one of"):
        importance_weights(old, engine, mask, "seq")


def test_off_policy_sequence_mask_by_hand():
    # mean log(pi_engine / pi_theta): rows 0, 1: 1.0; row 2: (0.2 + 0.4) / 2 = 0.3; row 3: 2.0 (its padding ignored)
    engine = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, 50.0]])
    current = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-1.2, -1.4], [-3.0, -90.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    adv = torch.tensor([-1.0, 1.0, -1.0, -0.5])
    torch.testing.assert_close(sequence_sampler_kl(current, engine, mask), torch.tensor([1.0, 1.0, 0.3, 2.0]))
    # dropped: negative advantage AND KL > 0.5 -> rows 0 and 3; row 1 is positive, row 2 is close to the sampler
    assert off_policy_sequence_mask(current, engine, adv, mask, 0.5).tolist() == [False, True, True, False]
    assert off_policy_sequence_mask(current, engine, adv, mask, 1.5).tolist() == [True, True, True, False]
    assert off_policy_sequence_mask(current, engine, adv, mask, 2.0).all()  # KL <= delta keeps: 2.0 is kept


def test_quantile_by_hand_and_equal_to_torch():
    values = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    assert quantile(values, 0.8).item() == pytest.approx(4.2)  # position 0.8 * 4 = 3.2: 4 + 0.2 * (5 - 4)
    assert quantile(values, 1.0).item() == 5.0 and quantile(values, 0.0).item() == 1.0
    assert quantile(torch.zeros(0), 0.5).item() == math.inf  # no tokens: nothing is kept
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1001, generator=g)
    for q in (0.0, 0.13, 0.5, 0.8, 0.999, 1.0):
        assert quantile(x, q).item() == pytest.approx(torch.quantile(x, q).item(), abs=1e-7)


def test_high_entropy_mask_keeps_the_top_rho_of_real_tokens():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.7, 0.3, 0.2, 0.8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # 7 real tokens; the padding's 9.0 never counts
    threshold = quantile(entropy[mask.bool()], 1 - 0.2)  # sorted .1 .2 .3 .5 .7 .8 .9: position 4.8 -> 0.7 + 0.08
    assert threshold.item() == pytest.approx(0.78)
    assert high_entropy_mask(entropy, mask, threshold).tolist() == [[False, True, False, False],
                                                                  [False, False, False, True]]


def _algo(**knobs):
    return AlgoCfg(**knobs).resolved()


def test_corrections_off_is_none_and_on_is_the_product_with_statistics():
    old, engine, mask = _case()
    current = old.clone()
    adv = torch.tensor([-1.0, 1.0])
    assert corrections(_algo(), current, old, engine, adv, mask) == (None, {})
    entropy_keep = torch.tensor([[True, False, True], [True, True, False]])
    weights, stats = corrections(_algo(is_correction=True, is_mode="token_mask", is_cap=2.0,
                                       off_policy_mask_threshold=0.0), current, old, engine, adv, mask, entropy_keep)
    # IS: [[1, 2, 0], [.5, .5, 1]]; row 0 has A < 0 and sampler KL mean(log .5/.5, log .25/.5, log .3/.9) < 0: kept
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    assert stats["is/masked_token_fraction"] == (1, 5) and stats["is/masked_sequence_fraction"] == (0, 2)
    assert stats["opsm/masked_sequence_fraction"] == (0, 2)
    assert stats["entropy_mask/kept_token_fraction"] == (4, 5)
    kl0 = (0 + L(0.25 / 0.5) + L(0.3 / 0.9)) / 3
    assert stats["opsm/kl_max"] == pytest.approx(max(kl0, (L(0.8 / 0.4) + L(0.4 / 0.2)) / 2))


def test_sequence_mode_statistics_and_merge():
    old, engine, mask = _case()
    _, stats = corrections(_algo(is_correction=True, is_mode="sequence_mask", is_cap=2.0), old, old, engine,
                           torch.zeros(2), mask)
    assert stats["is/masked_sequence_fraction"] == (1, 2) and stats["is/masked_token_fraction"] == (3, 5)
    assert stats["is/seq_ratio_mean"][0] == pytest.approx(6.25) and stats["is/seq_ratio_max"] == pytest.approx(6.0)
    merged = merge_statistics([{"a": (1, 4), "r_max": 2.0, "r_min": 0.5}, {"a": (3, 4), "r_max": 5.0, "r_min": 0.7}])
    assert merged == {"a": 0.5, "r_max": 5.0, "r_min": 0.5}  # pooled (1 + 3) / 8, not the mean of means
