"""ε warm-up of norm-regularized adversarial training and the dead-unit check that flags collapse."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from captum_ext.datasets import SklearnDigits
from captum_ext.regularizers import NormRegularizedAdversarialTraining, group_norms
from captum_ext.regularizers.monitor import DeadUnitMonitor, dead_unit_share


def digits_cnn(seed: int) -> nn.Sequential:
    """The reproduction's digits CNN (benchmarks/_repro.py: small_cnn)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def test_warmup_scales_the_group_radius_linearly_in_training_steps_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    adv = NormRegularizedAdversarialTraining(net, norm="group", eps=0.4, group_size=2, warmup_steps=4)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    for t in (1, 2, 3, 4, 5):
        assert adv.warmup_factor() == min(1.0, t / 4)
        delta = adv.perturb(x, y)
        assert torch.allclose(group_norms(delta, 2), torch.tensor(0.4 * min(1.0, t / 4)), atol=1e-6)
        adv.loss(x, y)
        assert adv.last_parts["eps"] == pytest.approx(0.4 * min(1.0, t / 4))
    assert int(adv.warmup_done) == 5
    adv.eval()  # evaluation calls use the full radius and do not advance the schedule
    adv.loss(x, y)
    assert int(adv.warmup_done) == 5 and adv.last_parts["eps"] == pytest.approx(0.4)
    assert "warmup_done" in adv.state_dict()  # resumed training continues the schedule
    with pytest.raises(ValueError, match="warmup_steps"):
        NormRegularizedAdversarialTraining(net, warmup_steps=-1)


def test_dead_unit_share_and_monitor_thresholds():
    assert dead_unit_share([torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])]) == pytest.approx(1 / 3)
    mon = DeadUnitMonitor(jump=0.5)
    mon.update([0.4, 0.6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.update([0.5, 0.78])  # healthy drift: no warning
    with pytest.warns(RuntimeWarning, match="layer 1.*collapsing"):
        mon.update([0.5, 0.95])  # 0.875 of the live units of layer 1 died
    with pytest.raises(ValueError, match="jump"):
        DeadUnitMonitor(jump=1.5)


def _train_steps(warmup_steps: int, steps: int = 12) -> list[warnings.WarningMessage]:
    x, y = SklearnDigits().load("train")
    x = x[:, None]
    net = digits_cnn(2)
    adv = NormRegularizedAdversarialTraining(
        net, norm="group", eps=0.4, group_size=4, clamp=(0.0, 1.0), warmup_steps=warmup_steps
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (64,), generator=gen)
            opt.zero_grad()
            adv.loss(x[idx], y[idx]).backward()
            opt.step()
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_group_norm_training_without_warmup_is_flagged_and_warmup_keeps_units_alive():
    # The reproduction's setting (digits CNN, 4x4 patches, eps 0.4, clamp (0, 1), Adam 1e-3,
    # batch 64), seed 2: without warm-up the fully-connected ReLU layer dies within a few steps
    # (that run ends at chance after 8 epochs); with the default warm-up it does not.
    assert any("collapsing" in str(w.message) for w in _train_steps(warmup_steps=0))
    assert not _train_steps(warmup_steps=50)
