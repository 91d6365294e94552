"""Manipulation wrappers with stated float32 bounds, validated inputs, saved state; untouched models."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency
from torch import nn

from captum_ext.manipulation import SoftmaxShift, check_equivalence
from captum_ext.manipulation.equivalence import rounding_tolerance

U32 = torch.finfo(torch.float32).eps / 2


def wide_net(d: int, seed: int, gain: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        net[0].weight.mul_(gain)
        net[2].weight.mul_(gain)
    return net


@pytest.mark.parametrize("seed", range(8))
def test_float32_probability_error_is_within_the_documented_bound(seed):
    gen = torch.Generator().manual_seed(seed)
    d = 64
    net = wide_net(d, seed, gain=float(torch.empty(1).uniform_(1, 20, generator=gen)))
    scale = 10 ** float(torch.empty(1).uniform_(-1, 3, generator=gen))
    x = torch.randn(128, d, generator=gen) * 10 ** float(torch.empty(1).uniform_(-1, 1.5, generator=gen))
    picture = torch.randn(d, generator=gen) * scale
    with torch.no_grad():
        f = net(x)
        reach = picture.norm() * x.norm(dim=1)  # Cauchy-Schwarz bound of |<M, x>|
        fmax = f.abs().amax(1)
        for wrapper, bound in (
            (SoftmaxShift.paint(net, 3, picture), U32 * (4 + 3 * fmax + reach)),
            (SoftmaxShift.add_pattern(net, picture, 2.0), U32 * (4 + 2 * fmax + 2.0 * reach)),
        ):
            err = (wrapper(x).softmax(1) - f.softmax(1)).abs().amax(1)
            assert bool((err <= bound).all()), float((err / bound).max())


def test_check_equivalence_tolerance_follows_dtype_and_logits():
    # picture scale 100, |x| ~ 10: float32 probabilities differ by ~1e-5, above a fixed atol of 1e-5,
    # although the wrapper is equivalent by construction.
    net = wide_net(64, 0, gain=5.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=gen) * 10 / 8
    painted = SoftmaxShift.paint(net, 2, torch.randn(64, generator=gen) * 100)
    report = check_equivalence(net, painted, x)
    assert report.max_prob_diff > 1e-6  # rounding is visible ...
    assert report.max_prob_diff <= report.tolerance and report.equivalent()  # ... and within the bound
    assert "equivalent" in report.verdict() and "100% of examples" in report.verdict()
    report64 = check_equivalence(net.double(), SoftmaxShift.paint(net, 2, torch.ones(64)), x.double())
    assert report64.tolerance < 1e-12 and report64.equivalent()
    # a huge pattern: float32 cannot hold the classifier, predictions change, the verdict says so
    huge = SoftmaxShift.add_pattern(net.float(), torch.ones(64), strength=1e7)
    bad = check_equivalence(net, huge, x)
    assert bad.predictions_agree < 1.0 and not bad.equivalent()
    assert "NOT equivalent" in bad.verdict() and "too large" in bad.verdict()
    assert rounding_tolerance(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.float64)) < 1e-14


def test_check_equivalence_leaves_train_mode_models_untouched(untouched):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).train()
    other = SoftmaxShift.add_pattern(net, torch.ones(4))
    with untouched(net), untouched(other):
        check_equivalence(net, other, torch.randn(5, 4))
    assert int(net[1].num_batches_tracked) == 0 and net.training


def test_painted_class_is_saved_and_loaded_with_the_picture():
    net = wide_net(6, 0)
    picture = torch.linspace(-1, 1, 6)
    saved = SoftmaxShift.paint(net, 1, picture).state_dict()
    restored = SoftmaxShift.paint(net, 4, torch.zeros(6))
    restored.load_state_dict(saved)
    assert restored.shift.target == 1
    sal = Saliency(restored).attribute(torch.randn(3, 6), target=1, abs=False)
    assert torch.allclose(sal, picture.expand(3, 6), atol=1e-6)


def test_paint_validates_picture_and_target_at_construction():
    net = wide_net(6, 0)
    with pytest.raises(ValueError, match="shape of one example"):
        SoftmaxShift.paint(net, 1, torch.ones(5))
    with pytest.raises(ValueError, match="out of range"):
        SoftmaxShift.paint(net, 10, torch.ones(6))
    with pytest.raises(ValueError, match="NaN"):
        SoftmaxShift.paint(net, 1, torch.tensor([1.0, float("nan"), 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        SoftmaxShift.add_pattern(net, torch.full((6,), float("inf")))
    with pytest.raises(ValueError, match="non-negative"):
        SoftmaxShift.paint(net, -1, torch.ones(6))


def test_paint_probe_leaves_a_train_mode_model_untouched(untouched):
    net = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    with untouched(net):
        SoftmaxShift.paint(net, 2, torch.ones(6))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torch_jit_script_is_refused_clearly_and_trace_works():
    net = wide_net(6, 0)
    painted = SoftmaxShift.paint(net, 1, torch.ones(6))
    with pytest.raises(TypeError, match="torch.jit.trace"):
        torch.jit.script(painted)
    x = torch.randn(3, 6)
    traced = torch.jit.trace(painted, (x,))
    assert torch.allclose(traced(x), painted(x))
