"""Score-matching trace estimates that do not depend on BatchNorm's mode or on autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.regularizers import AntiScoreMatching, ScoreMatching


def bn_softplus_net(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Softplus(beta=2), nn.Linear(12, 3)).to(dtype)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def trace_of(wrapper: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 5) -> float:
    torch.manual_seed(seed)
    wrapper.loss(x, y)
    return wrapper.last_parts["trace"]


@pytest.mark.parametrize("cls", [ScoreMatching, AntiScoreMatching])
def test_trace_in_train_mode_is_the_frozen_statistics_trace(cls):
    # The noisy copies and the base logit are evaluated with the same (running) statistics, so the
    # estimate in train mode is the one of the eval-mode model: before, each loss() normalised the
    # noisy copies with their own batch statistics (traces -0.8 to -2.8 against an exact -0.06).
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    net = bn_softplus_net()
    wrapper = cls(net, sigma=1e-2, n_samples=4)
    in_training = trace_of(wrapper.train(), x, y)  # the task forward moves the running statistics
    assert net.training and int(net[1].num_batches_tracked) == 1
    frozen = trace_of(wrapper.eval(), x, y)  # the trace with those statistics
    assert in_training == pytest.approx(frozen, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("cls", [ScoreMatching, AntiScoreMatching])
def test_trace_under_bfloat16_autocast_is_computed_in_float32(cls):
    # Under autocast the differences of logits divided by sigma^2 were bfloat16 noise (anti-SM
    # reported 147 against -0.13); the trace is now computed with autocast off.
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    wrapper = cls(bn_softplus_net(torch.float32).eval(), sigma=1e-2, n_samples=4)
    plain = trace_of(wrapper, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = trace_of(wrapper, x, y)
    # float32 rounding of the logit differences, 2 ulp(|f| ~ 3) / sigma^2 ~ 0.01 per example
    assert mixed == pytest.approx(plain, abs=0.02)


def test_low_precision_weights_are_refused_with_the_fix():
    wrapper = ScoreMatching(nn.Linear(6, 3).to(torch.bfloat16))
    with pytest.raises(TypeError, match="float32 or float64.*autocast"):
        wrapper.loss(torch.randn(4, 6, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 0]))
