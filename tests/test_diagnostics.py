"""hessian_trace: Hutchinson with exact HVPs against dense autograd Hessians of tiny float64 nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.regularizers import HessianTrace, hessian_trace, relu_to_softplus

DT = torch.float64


def tiny_net(seed: int = 0, d: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(d, 12), nn.Softplus(beta=2.0), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, classes)
    )
    return net.to(DT)


def dense(net, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example exact trace, ‖H‖_F² - Σ H_ii² (Rademacher variance / 2) and ‖∇f‖²."""
    traces, off, gsq = [], [], []
    for xi, ti in zip(x, target, strict=True):
        shape = xi.shape

        def f(z, ti=ti, shape=shape):
            return net(z.reshape(1, *shape))[0, ti]

        h = torch.autograd.functional.hessian(f, xi.reshape(-1))
        g = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        traces.append(torch.trace(h))
        off.append((h**2).sum() - (torch.diagonal(h) ** 2).sum())
        gsq.append(g.pow(2).sum())
    return torch.stack(traces), torch.stack(off), torch.stack(gsq)


def test_exact_mode_equals_dense_trace_and_gradient_norm(untouched):
    net = tiny_net()
    x = torch.randn(5, 6, dtype=DT)
    y = torch.tensor([0, 1, 2, 1, 0])
    with untouched(net):
        res = hessian_trace(net, x, y, exact=True)
    tr, _, gsq = dense(net, x, y)
    assert isinstance(res, HessianTrace) and res.exact and res.n_probes == 6
    assert torch.allclose(res.trace, tr, rtol=1e-10, atol=1e-12)
    assert torch.allclose(res.grad_norm_sq, gsq, rtol=1e-10, atol=1e-12)
    assert torch.equal(res.stderr, torch.zeros(5, dtype=DT))
    # chunking does not change exact float64 results beyond rounding
    chunked = hessian_trace(net, x, y, exact=True, max_examples_per_batch=2)
    assert torch.allclose(chunked.trace, res.trace, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchinson_is_unbiased_with_honest_stderr(seed):
    net = tiny_net(seed)
    x = torch.randn(8, 6, dtype=DT, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(8) % 3
    k = 400
    res = hessian_trace(net, x, y, n_probes=k, seed=seed)
    tr, off, gsq = dense(net, x, y)
    # Rademacher probes: Var(vᵀHv) = 2(‖H‖_F² - Σ H_ii²)
    true_se = (2 * off / k).sqrt()
    assert torch.allclose(res.stderr, true_se, rtol=0.25, atol=1e-12)
    z = (res.trace - tr) / true_se.clamp(min=1e-12)
    assert float(z.abs().max()) < 4.5, z
    assert torch.allclose(res.grad_norm_sq, gsq, rtol=1e-10)
    summary = res.summary()
    assert summary["trace"] == pytest.approx(float(res.trace.mean()))
    assert summary["grad_norm_sq"] == pytest.approx(float(gsq.mean()))


def test_tuple_inputs_additional_args_and_target_forms(untouched):
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 4)

        def forward(self, x1, x2, scale):
            return torch.nn.functional.softplus(self.a(x1) + self.b(x2)) * scale

    net = Two().to(DT).train()
    x1, x2 = torch.randn(4, 3, dtype=DT), torch.randn(4, 2, dtype=DT)
    with untouched(net):
        res = hessian_trace(net, (x1, x2), 2, additional_forward_args=(1.5,), exact=True)

    def joint(z, i):
        return net(z[None, :3], z[None, 3:], 1.5)[0, 2]

    for i in range(4):
        z = torch.cat([x1[i], x2[i]])
        h = torch.autograd.functional.hessian(lambda v, i=i: joint(v, i), z)
        assert float(res.trace[i]) == pytest.approx(float(torch.trace(h)), rel=1e-10, abs=1e-12)
    assert res.n_probes == 5
    # every Captum target form gives the same result
    flat = hessian_trace(net, (x1, x2), [2, 2, 2, 2], additional_forward_args=1.5, exact=True)
    tens = hessian_trace(net, (x1, x2), torch.tensor(2), additional_forward_args=(1.5,), exact=True)
    assert torch.equal(flat.trace, res.trace) and torch.equal(tens.trace, res.trace)
    assert net.training  # the mode is left as it was


def test_default_target_is_the_predicted_class_and_relu_nets_have_zero_trace():
    net = tiny_net(3)
    x = torch.randn(6, 6, dtype=DT)
    pred = net(x).argmax(1)
    assert torch.equal(hessian_trace(net, x, exact=True).trace, hessian_trace(net, x, pred, exact=True).trace)
    relu = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(DT)
    assert torch.equal(hessian_trace(relu, x, 0, n_probes=3).trace, torch.zeros(6, dtype=DT))
    smooth = relu_to_softplus(relu)
    assert float(hessian_trace(smooth, x, 0, exact=True).trace.abs().max()) > 0


def test_float32_under_no_grad_with_images():
    torch.manual_seed(0)
    net = relu_to_softplus(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    ).eval()
    x = torch.rand(3, 1, 5, 5)
    with torch.no_grad():
        res = hessian_trace(net, x, torch.tensor([0, 1, 2]), exact=True)
    ref = hessian_trace(net.double(), x.double(), torch.tensor([0, 1, 2]), exact=True)
    assert res.trace.dtype == torch.float32
    # float32 double backward vs float64: agreement to float32 rounding of the Hessian entries
    assert torch.allclose(res.trace.double(), ref.trace, rtol=1e-4, atol=1e-4)


def test_validation():
    net = tiny_net()
    x = torch.randn(2, 6, dtype=DT)
    with pytest.raises(ValueError, match="n_probes"):
        hessian_trace(net, x, 0, n_probes=0)
    with pytest.raises(ValueError, match="max_examples_per_batch"):
        hessian_trace(net, x, 0, max_examples_per_batch=0)
    with pytest.raises(TypeError, match="floating point"):
        hessian_trace(net, torch.ones(2, 6, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="target"):
        hessian_trace(net, x, [0, 1, 2])
    with pytest.raises(ValueError, match="classes"):
        hessian_trace(net, x, 7)
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Softplus(), nn.Linear(4, 2)).to(DT).train()
    with pytest.raises(ValueError, match="eval"):
        hessian_trace(bn, x, 0)
    assert hessian_trace(bn.eval(), x, 0, exact=True).trace.shape == (2,)
