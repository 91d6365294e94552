"""captum_ext._autograd: input gradients, HVPs, Hutchinson, math attention kernel, double-backward checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext._autograd import (
    NoDoubleBackwardError,
    custom_function_nodes,
    double_backward_support,
    hutchinson,
    input_gradient,
    input_hvp,
    math_attention_kernel,
)
from captum_ext.regularizers import hessian_trace

from ._nets import OnceTanh

DT = torch.float64


def test_gradient_and_hvp_match_a_dense_hessian():
    a = torch.randn(4, 4, dtype=DT)
    x = torch.randn(3, 4, dtype=DT, requires_grad=True)
    y = torch.randn(3, 2, dtype=DT, requires_grad=True)  # unused input: zeros, not None
    f = (torch.sin(x @ a) ** 2).sum()
    g = input_gradient(f, (x, y), create_graph=True)
    assert torch.equal(g[1], torch.zeros_like(y))
    v = torch.randn(3, 4, dtype=DT)
    hv = input_hvp(g, (x, y), (v, torch.zeros_like(y)))[0]
    for i in range(3):
        dense = torch.autograd.functional.hessian(lambda z: (torch.sin(z @ a) ** 2).sum(), x[i].detach())
        torch.testing.assert_close(hv[i], dense @ v[i], rtol=1e-12, atol=1e-12)


def test_once_differentiable_function_is_found_and_strict_hvp_refuses_zeros():
    x = torch.randn(2, 3, dtype=DT, requires_grad=True)
    out = OnceTanh.apply(x).sum()
    assert custom_function_nodes(out.grad_fn) == ["OnceTanhBackward"]
    g = input_gradient(out, (x,), create_graph=True)
    # autograd answers with silent zeros; strict mode calls it what it is
    assert torch.equal(input_hvp(g, (x,), (torch.ones_like(x),))[0], torch.zeros_like(x))
    with pytest.raises(NoDoubleBackwardError, match="once_differentiable"):
        input_hvp(g, (x,), (torch.ones_like(x),), strict=True)


def test_double_backward_support_reports_missing_kernels():
    x = torch.randn(2, 6, requires_grad=True)
    ok, reason = double_backward_support(nn.Hardsigmoid()(x), (x,))
    assert not ok and "hardsigmoid" in reason
    assert double_backward_support(torch.tanh(x), (x,)) == (True, "")


def test_hutchinson_mean_and_standard_error():
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]], dtype=DT)
    mean, se = hutchinson(q)
    torch.testing.assert_close(mean, torch.tensor([3.0, 2.0], dtype=DT))
    torch.testing.assert_close(se, torch.tensor([(4.0 / 3) ** 0.5, 0.0], dtype=DT))
    assert hutchinson(q, exact=True)[0].tolist() == [9.0, 6.0]


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x.reshape(x.shape[0], 4, 3))
        return self.out(self.att(h, h, h, need_weights=False)[0].mean(1))


def test_math_attention_kernel_gives_multihead_attention_a_double_backward():
    torch.manual_seed(0)
    model = _MHA().eval()
    x = torch.randn(2, 12, requires_grad=True)
    with math_attention_kernel():
        assert double_backward_support(model(x), (x,)) == (True, "")


def test_hessian_trace_of_multihead_attention_matches_dense_trace():
    torch.manual_seed(0)
    model = _MHA().double().eval()
    x = torch.randn(2, 12, dtype=DT)
    res = hessian_trace(model, x, target=1, exact=True)
    for i in range(2):
        with math_attention_kernel():  # the oracle needs the double backward too
            dense = torch.autograd.functional.hessian(lambda z: model(z[None])[0, 1], x[i])
        assert abs(float(res.trace[i]) - float(dense.trace())) <= 1e-10 * (1 + float(dense.abs().max()))


class _OnceTanhNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(OnceTanh.apply(self.a(x)))


def test_hessian_trace_refuses_a_once_differentiable_layer_instead_of_reporting_zero():
    torch.manual_seed(0)
    net = _OnceTanhNet().double().eval()
    x = torch.randn(4, 6, dtype=DT)
    with pytest.raises(NoDoubleBackwardError, match="differentiate again|detached"):
        hessian_trace(net, x, target=0, exact=True)


def test_gradient_penalty_warns_on_custom_functions_and_refuses_a_graphless_gradient():
    from captum_ext._autograd import penalty_gradient
    from captum_ext.regularizers import InputGradientPenalty

    torch.manual_seed(0)
    wrapped = InputGradientPenalty(_OnceTanhNet(), lam=1.0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with pytest.warns(RuntimeWarning, match="OnceTanhBackward"):
        wrapped.loss(x, y)
    frozen = torch.zeros(3, requires_grad=True)
    with pytest.raises(NoDoubleBackwardError, match="never be trained"):
        penalty_gradient((frozen * 2.0).sum(), (frozen,), "test")


def test_differentiable_saliency_refuses_a_once_differentiable_layer():
    from captum_ext.attr.gradient_saliency import gradient_saliency

    torch.manual_seed(0)
    net = _OnceTanhNet().double().eval()
    for p in net.parameters():  # a frozen surrogate: only the input carries a graph
        p.requires_grad_(False)
    x = torch.randn(3, 6, dtype=DT, requires_grad=True)
    plain = gradient_saliency(net, x, torch.tensor([0, 1, 2]))
    assert plain.shape == x.shape
    with pytest.raises(NoDoubleBackwardError, match="differentiate again"):
        gradient_saliency(net, x, torch.tensor([0, 1, 2]), create_graph=True)
