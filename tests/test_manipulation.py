"""Softmax-shift and loss-gradient manipulation (Srinivas & Fleuret, Sec. 2, App. A, A.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import InputXGradient, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ext.manipulation import (
    LossGradientManipulation,
    SoftmaxShift,
    check_equivalence,
    sine_shift,
)

DT = torch.float64


def mlp(d: int, hidden: int, c: int, seed: int, act: type[nn.Module] = nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, c)).to(DT).eval()


def grads(f, x: torch.Tensor) -> torch.Tensor:
    """Gradient of the sum of ``f(x)`` (per-example scalars) with respect to ``x``."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


def make_shift(kind: str, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "pattern":
        return None, torch.randn(d, generator=gen, dtype=DT)
    if kind == "mlp":
        torch.manual_seed(seed + 2)
        g = nn.Sequential(nn.Linear(d, 5), nn.Softplus(), nn.Linear(5, 1)).to(DT)
        return g, None
    w = torch.randn(d, generator=gen, dtype=DT)
    return (lambda x: 3.0 * torch.sin(x @ w) + x.pow(2).sum(1)), None


@settings(max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 6),
    hidden=st.integers(1, 8),
    c=st.integers(2, 5),
    n=st.integers(1, 6),
    kind=st.sampled_from(["pattern", "mlp", "callable"]),
    scale=st.floats(0.1, 10.0),
)
def test_softmax_shift_keeps_probabilities_and_loss_gradients(seed, d, hidden, c, n, kind, scale):
    net = mlp(d, hidden, c, seed)
    shift_fn, pattern = make_shift(kind, d, seed)
    if pattern is not None:
        shifted = SoftmaxShift.add_pattern(net, pattern, strength=scale)
        g_of_x = lambda x: scale * (x @ pattern)  # noqa: E731
    else:
        shifted = SoftmaxShift(net, shift_fn)
        g_of_x = lambda x: shift_fn(x).reshape(-1)  # noqa: E731
    x = torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed)) * scale
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        p, p_tilde = net(x).softmax(1), shifted(x).softmax(1)
    assert torch.allclose(p, p_tilde, atol=1e-12, rtol=0)

    def loss(m):
        return lambda z: F.cross_entropy(m(z), y, reduction="none")

    with torch.no_grad():
        assert torch.allclose(loss(net)(x), loss(shifted)(x), atol=1e-10, rtol=0)
    assert torch.allclose(grads(loss(net), x), grads(loss(shifted), x), atol=1e-9, rtol=0)

    dg = grads(g_of_x, x)
    for cls in range(c):
        plain = grads(lambda z, k=cls: net(z)[:, k], x)
        moved = grads(lambda z, k=cls: shifted(z)[:, k], x)
        assert torch.allclose(moved - plain, dg, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_paint_makes_saliency_return_the_picture(dtype, atol):
    torch.manual_seed(0)
    net = (
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
        .to(dtype)
        .eval()
    )
    # a smiley: any picture works
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    picture = (((yy - 3.5) ** 2 + (xx - 3.5) ** 2).sqrt() < 3.2).to(dtype) - 0.5
    picture[2, 2] = picture[2, 5] = -2.0
    picture = picture.unsqueeze(0)  # (1, 8, 8)
    painted = SoftmaxShift.paint(net, target=2, picture=picture)
    x = torch.randn(5, 1, 8, 8, dtype=dtype)

    sal = Saliency(painted).attribute(x, target=2, abs=False)
    assert torch.allclose(sal, picture.expand_as(sal), atol=atol, rtol=0)
    assert torch.allclose(
        Saliency(painted).attribute(x, target=2), picture.abs().expand_as(sal), atol=atol, rtol=0
    )
    # the plain model's saliency is nothing like the picture ...
    plain = Saliency(net).attribute(x, target=2, abs=False)
    assert not torch.allclose(plain, picture.expand_as(plain), atol=0.1)
    # ... and the classifier is the same
    report = check_equivalence(net, painted, x, target=2)
    assert report.equivalent(atol=100 * atol)
    assert report.predictions_agree == 1.0
    assert report.loss_grad_max_diff < 100 * atol
    assert report.logit_grad_max_diff > 0.1


def test_add_pattern_moves_every_attribution_by_the_pattern():
    net = mlp(6, 5, 3, seed=1)
    pattern = torch.linspace(-1, 1, 6, dtype=DT)
    shifted = SoftmaxShift.add_pattern(net, pattern, strength=2.5)
    x = torch.randn(4, 6, dtype=DT)
    for t in range(3):
        a = Saliency(shifted).attribute(x, target=t, abs=False)
        b = Saliency(net).attribute(x, target=t, abs=False)
        assert torch.allclose(a - b, 2.5 * pattern.expand_as(a), atol=1e-12)
    ixg = InputXGradient(shifted).attribute(x, target=0) - InputXGradient(net).attribute(x, target=0)
    assert torch.allclose(ixg, 2.5 * x * pattern, atol=1e-12)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)

    def forward(self, x1, x2, scale=1.0):
        return torch.tanh(self.a(x1)) * scale + self.b(x2)


def test_tuple_inputs_and_additional_args():
    torch.manual_seed(0)
    net = TwoInputs().to(DT)
    p1, p2 = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)
    shifted = SoftmaxShift.add_pattern(net, (p1, p2))
    x1, x2 = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    a1, a2 = Saliency(shifted).attribute((x1, x2), target=1, abs=False, additional_forward_args=2.0)
    b1, b2 = Saliency(net).attribute((x1, x2), target=1, abs=False, additional_forward_args=2.0)
    assert torch.allclose(a1 - b1, p1.expand_as(a1), atol=1e-12)
    assert torch.allclose(a2 - b2, p2.expand_as(a2), atol=1e-12)
    rep = check_equivalence(net, shifted, (x1, x2), target=[0, 1, 2, 3, 0], additional_forward_args=2.0)
    assert rep.equivalent(1e-12)


def test_softmax_shift_validation():
    net = mlp(4, 3, 2, seed=0)
    x = torch.randn(3, 4, dtype=DT)
    with pytest.raises(ValueError, match="one scalar per example"):
        SoftmaxShift(net, lambda z: z)(x)
    with pytest.raises(ValueError, match="must match one example"):
        SoftmaxShift.add_pattern(net, torch.ones(5, dtype=DT))(x)
    with pytest.raises(ValueError, match="out of range"):
        SoftmaxShift.paint(net, 7, torch.ones(4, dtype=DT))(x)
    with pytest.raises(TypeError):
        SoftmaxShift(net, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logits"):
        SoftmaxShift(nn.Identity(), lambda z: z.sum(1))(torch.randn(2, 3, 4))


def test_shift_module_follows_device_and_state_dict():
    net = mlp(4, 3, 2, seed=0)
    shifted = SoftmaxShift.add_pattern(net, torch.ones(4, dtype=DT))
    keys = set(shifted.state_dict())
    assert "shift.pattern_0" in keys and "model.0.weight" in keys
    assert shifted.model is net


@settings(max_examples=20)
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(1e-4, 1.0),
    m=st.floats(1.0, 1e4),
    phase=st.floats(0.0, 2 * math.pi),
)
def test_loss_gradient_manipulation_bound(seed, eps, m, phase):
    d, c, n = 5, 3, 6
    net = mlp(d, 4, c, seed)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(d, generator=gen, dtype=DT) * 2 - 1
    fooled = LossGradientManipulation(net, eps=eps, m=m, direction=u, phase=phase)
    x = torch.randn(n, d, generator=gen, dtype=DT)
    y = torch.randint(0, c, (n,), generator=gen)
    plain = lambda z: F.cross_entropy(net(z), y, reduction="none")  # noqa: E731
    manip = lambda z: fooled.per_example_loss(z, y)  # noqa: E731
    with torch.no_grad():
        gap = manip(x) - plain(x)
        assert torch.equal(fooled(x), net(x))  # logits untouched
    assert float(gap.abs().max()) <= eps * (1 + 1e-12)
    dgrad = grads(manip, x) - grads(plain, x)
    expected = eps * m * torch.cos(m * (x @ u) + phase).unsqueeze(1) * u
    assert torch.allclose(dgrad, expected, atol=1e-9 * max(1.0, eps * m), rtol=1e-9)
    assert bool((dgrad.abs() <= m * eps * u.abs() * (1 + 1e-9) + 1e-12).all())


def test_loss_gradient_manipulation_reaches_m_eps():
    net = mlp(4, 3, 3, seed=0)
    eps, m = 1e-3, 1e4
    fooled = LossGradientManipulation(net, eps=eps, m=m)
    # <u, x> = 0 with u = 1: cos = 1, so every coordinate moves by exactly m * eps = 10
    x = torch.tensor([[1.0, -1.0, 2.0, -2.0], [0.5, 0.5, -0.5, -0.5]], dtype=DT)
    rep = check_equivalence(net, fooled, x, target=[0, 1])
    assert rep.max_prob_diff == 0.0 and rep.logit_grad_max_diff == 0.0
    assert rep.max_loss_diff <= eps
    assert rep.loss_grad_max_diff == pytest.approx(m * eps, rel=1e-9)
    assert rep.loss_grad_rel_diff > 10  # the loss-gradient is dominated by the sine
    loss = fooled.loss(x, torch.tensor([0, 1]))
    assert set(fooled.last_parts) == {"ce", "shift", "total"}
    assert float(loss) == pytest.approx(fooled.last_parts["total"])


def test_sine_shift_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="non-negative"):
        sine_shift(x, -1.0, 1.0)
    with pytest.raises(ValueError, match="shaped like one example"):
        sine_shift(x, 1.0, 1.0, direction=torch.ones(4))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        sine_shift(x, 1.0, 1.0, direction=torch.full((3,), 2.0))


def test_check_equivalence_leaves_models_untouched(untouched):
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    net.eval()
    other = SoftmaxShift.add_pattern(net, torch.ones(4))
    x = torch.randn(5, 4)
    with untouched(net), torch.no_grad():
        rep = check_equivalence(net, other, x)
    assert rep.equivalent(1e-5)
    assert rep.logit_grad_max_diff == pytest.approx(1.0, abs=1e-5)
    same = check_equivalence(net, net, x, target=torch.tensor(1))
    assert same.max_prob_diff == 0.0 and same.logit_grad_max_diff == 0.0
    different = check_equivalence(net, nn.Linear(4, 3), x)
    assert not different.equivalent()
    assert set(rep.as_dict()) >= {"max_prob_diff", "loss_grad_max_diff"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_softmax_shift_on_cuda():
    net = mlp(4, 3, 2, seed=0).cuda()
    painted = SoftmaxShift.paint(net, 1, torch.arange(4.0, dtype=DT)).cuda()
    x = torch.randn(3, 4, dtype=DT, device="cuda")
    sal = Saliency(painted).attribute(x, target=1, abs=False)
    assert torch.allclose(sal.cpu(), torch.arange(4.0, dtype=DT).expand(3, 4))
