from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeforge.config import CalibrationConfig
from edgeforge.data import Split, calibration_indices
from edgeforge.training import kd_loss, lr_factor


def test_kd_loss_hard_only_when_alpha_zero() -> None:
    s = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    assert torch.allclose(kd_loss(s, torch.randn(8, 5), y, 4.0, 0.0), F.cross_entropy(s, y))


def test_kd_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    temp, alpha = 3.0, 0.6
    p_t = F.softmax(t / temp, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean()
    expected = alpha * kl * temp**2 + (1 - alpha) * F.cross_entropy(s, y)
    assert kd_loss(s, t, y, temp, alpha).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_soft_term_zero_for_identical_logits() -> None:
    s = torch.randn(6, 4)
    y = s.argmax(1)
    assert kd_loss(s, s.clone(), y, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_schedule_ends_near_zero() -> None:
    assert lr_factor("cosine", 0, 10, 0) == 1.0
    assert lr_factor("cosine", 9, 10, 0) < 0.03
    assert lr_factor("constant", 5, 10, 0) == 1.0
    assert lr_factor("cosine", 0, 10, 2) == pytest.approx(1 / 3)


def test_stratified_calibration_covers_every_class() -> None:
    y = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    split = Split("train", torch.zeros(100, 1, 2, 2), y)
    idx = calibration_indices(split, CalibrationConfig(samples=12, selection="stratified", seed=3))
    picked = y[idx]
    assert len(idx) == 12 and set(picked.tolist()) == {0, 1, 2}
    again = calibration_indices(split, CalibrationConfig(samples=12, selection="stratified", seed=3))
    assert torch.equal(idx, again)
    other = calibration_indices(split, CalibrationConfig(samples=12, selection="stratified", seed=4))
    assert not torch.equal(idx, other), "the seed picks the subset"
