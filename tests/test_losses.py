"""Losses: values on hand-made cases and the properties the method relies on."""

import math

import pytest
import torch
import torch.nn.functional as F

from dqecir.losses import ITCLoss, MarginRank, RelevanceKL, Temperature


def test_itc_matches_cross_entropy_and_masks_ignored_pairs():
    torch.manual_seed(0)
    s = torch.randn(4, 4)
    tau = torch.tensor(0.1)
    ref = F.cross_entropy(s / 0.1, torch.arange(4))
    assert torch.allclose(ITCLoss()(s, tau)["itc"], ref)
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 1] = True
    masked = ITCLoss()(s, tau, ignore)["itc"]
    row0 = -torch.log_softmax(torch.stack([s[0, 0], s[0, 2], s[0, 3]]) / 0.1, 0)[0]
    rest = F.cross_entropy(s[1:] / 0.1, torch.arange(1, 4), reduction="sum")
    assert torch.allclose(masked, (row0 + rest) / 4)
    # the diagonal is never masked
    ignore.fill_diagonal_(True)
    assert torch.isfinite(ITCLoss()(s, tau, ignore)["itc"])


def test_kl_is_zero_when_distributions_are_equal():
    img = torch.rand(5, 6)
    tau, tau_soft = torch.tensor(0.07), 0.05
    model_scores = img * (0.07 / 0.05)  # same softmax after each temperature
    out = RelevanceKL(tau_soft)(model_scores, img, tau)["kl"]
    assert abs(float(out)) < 1e-6
    other = RelevanceKL(tau_soft)(torch.rand(5, 6), img, tau)["kl"]
    assert float(other) > 1e-4


def test_kl_ignores_padding_slots():
    img = torch.rand(2, 4)
    m = img * (0.07 / 0.05)
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    m2 = m.clone()
    m2[0, 2:] = 100.0  # garbage in padded slots must not matter
    a = RelevanceKL(0.05)(m, img, torch.tensor(0.07), valid)["kl"]
    b = RelevanceKL(0.05)(m2, img, torch.tensor(0.07), valid)["kl"]
    assert torch.allclose(a, b) and abs(float(a)) < 1e-6


def test_rank_zero_when_every_negative_is_beaten_by_the_margin():
    pos = torch.tensor([0.9, 0.8])
    neg = torch.tensor([[0.5, 0.6], [0.3, 0.59]])
    out = MarginRank()(pos, neg, 0.2)
    assert float(out["rank"]) == 0.0 and float(out["rank_active"]) == 0.0
    out = MarginRank()(pos, neg, 0.25)
    # only 0.25 - 0.8 + 0.59 = 0.04 is active, one hinge of four
    assert float(out["rank"]) == pytest.approx(0.04 / 4, abs=1e-6)
    assert float(out["rank_active"]) == 0.25
    # invalid slots are ignored: averaging over the 3 valid ones
    valid = torch.tensor([[False, True], [True, True]])
    out = MarginRank()(pos, neg, 0.25, valid)
    assert float(out["rank"]) == pytest.approx(0.04 / 3, abs=1e-6)
    valid = torch.tensor([[True, True], [True, False]])
    assert float(MarginRank()(pos, neg, 0.25, valid)["rank"]) == 0.0


def test_temperature_is_learnable_and_positive():
    t = Temperature(0.07)
    assert math.isclose(float(t().detach()), 0.07, rel_tol=1e-6)
    assert t.log_tau.requires_grad
    assert not Temperature(0.07, learnable=False).log_tau.requires_grad
    with pytest.raises(ValueError):
        Temperature(0.0)
