"""Matrix-free Gauss-Newton products against the factor, double backward and an independent oracle."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_ext.attr.curvature.gauss_newton import GaussNewtonHessian, apply_softmax_covariance
from captum_ext.attr.hessian import (
    ExactHessian,
    build_loss_graph,
    low_rank_factor,
    softmax_covariance,
)

from ._nets import OnceRelu, relu_cnn, relu_mlp, softplus_mlp


def _graph(model, x, target=None):
    return build_loss_graph(model, (x,), (), None if target is None else torch.as_tensor(target))


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("jvp", ["vjp", "forward"])
def test_gn_equals_factor_and_double_backward_on_relu_nets(net, jvp):
    if net == "mlp":
        model, x = relu_mlp(c=5), torch.randn(3, 12, dtype=torch.float64)
    else:
        model, x = relu_cnn(c=5), torch.randn(3, 2, 6, 6, dtype=torch.float64)
    v = torch.randn(3, 4, x[0].numel(), dtype=torch.float64)
    gn = GaussNewtonHessian(_graph(model, x), jvp=jvp, forward_func=model)
    factor = low_rank_factor(_graph(model, x), rank_tol=0.0)
    exact = ExactHessian(_graph(model, x))
    hv = gn.hvp(v)
    assert gn.n_hvp == 4
    torch.testing.assert_close(hv, factor.hvp(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(hv, exact.hvp(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(gn.gradient, factor.gradient, rtol=0, atol=1e-14)
    torch.testing.assert_close(gn.hvp(v[:, 0]), hv[:, 0], rtol=0, atol=1e-14)


def test_gn_differs_from_double_backward_by_exactly_the_logit_curvature_term():
    model, x = softplus_mlp(c=4), torch.randn(3, 12, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    v = torch.randn(3, 12, dtype=torch.float64)
    gn = GaussNewtonHessian(_graph(model, x, target))
    exact = ExactHessian(_graph(model, x, target))
    diff = exact.hvp(v) - gn.hvp(v)
    # independent oracle: sum_i (p_i - 1[i=t]) Hess f_i v, one example at a time by autograd.functional
    probs = torch.softmax(model(x).detach(), 1)
    resid = probs - nn.functional.one_hot(target, 4).double()
    for k in range(3):
        _, hv = torch.autograd.functional.hvp(lambda z, k=k: (model(z[None])[0] * resid[k]).sum(), x[k], v[k])
        torch.testing.assert_close(diff[k], hv, rtol=0, atol=1e-12)
    assert diff.abs().max() > 1e-3  # the term is really there on a smooth net


def test_gn_is_cancellation_free_in_float32_at_high_confidence():
    """At p_t ~ 1 - 1e-10 (float32 p_t - 1 would be 0) the float32 product keeps float32 accuracy."""
    model32 = relu_mlp(c=5, dtype=torch.float32)
    with torch.no_grad():
        model32[-1].bias[0] += 25.0  # p_0 ~ 1 - 1e-10
    model64 = relu_mlp(c=5, dtype=torch.float64)
    model64.load_state_dict({k: t.double() for k, t in model32.state_dict().items()})
    x = torch.randn(2, 12)
    v = torch.randn(2, 12)
    g64 = _graph(model64, x.double())
    assert float(g64.probs.max(1).values.min()) > 1 - 1e-6
    ref = low_rank_factor(g64, rank_tol=0.0).hvp(v.double())
    hv = GaussNewtonHessian(_graph(model32, x)).hvp(v).double()
    # float32 J products: relative error a few ulps of the largest term (1e-5 is loose on purpose)
    assert float((hv - ref).norm() / ref.norm()) < 1e-5


def test_samples_average_the_copies():
    model = relu_mlp(c=4)
    x = torch.randn(2, 12, dtype=torch.float64).repeat_interleave(3, 0)
    x = x + 0.1 * torch.randn_like(x)
    v = torch.randn(2, 12, dtype=torch.float64)
    gn = GaussNewtonHessian(_graph(model, x), samples=3)
    per_copy = GaussNewtonHessian(_graph(model, x)).hvp(v.repeat_interleave(3, 0))
    torch.testing.assert_close(gn.hvp(v), per_copy.reshape(2, 3, 12).mean(1), rtol=0, atol=1e-14)
    assert gn.gradient.shape == (2, 12)


def test_top_eigenvalue_matches_factor():
    model, x = relu_mlp(c=3), torch.randn(2, 12, dtype=torch.float64)
    gn = GaussNewtonHessian(_graph(model, x))
    top = low_rank_factor(_graph(model, x), rank_tol=0.0).top_eigenvalue()
    torch.testing.assert_close(gn.top_eigenvalue(60), top, rtol=1e-8, atol=0)


def test_input_not_used_gives_zero_products():
    model = relu_mlp(c=3)
    x, unused = torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    graph = build_loss_graph(lambda a, b: model(a), (x, unused))
    hv = GaussNewtonHessian(graph).hvp(torch.randn(2, 17, dtype=torch.float64))
    assert hv.shape == (2, 17) and bool((hv[:, 12:] == 0).all())


def test_bad_arguments():
    graph = _graph(relu_mlp(c=3), torch.randn(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="jvp"):
        GaussNewtonHessian(graph, jvp="reverse")
    with pytest.raises(ValueError, match="forward_func"):
        GaussNewtonHessian(graph, jvp="forward")
    with pytest.raises(ValueError, match="samples"):
        GaussNewtonHessian(graph, samples=3)


@given(
    logits=st.lists(st.floats(-30, 30), min_size=2, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_apply_softmax_covariance_equals_dense(logits, seed):
    p = torch.softmax(torch.tensor([logits], dtype=torch.float64), 1)
    w = torch.randn(1, 3, p.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    dense = torch.einsum("nij,nmj->nmi", softmax_covariance(p), w)
    out = apply_softmax_covariance(p, w)
    scale = float(p.max() * w.abs().max()) + 1e-300
    torch.testing.assert_close(out / scale, dense / scale, rtol=0, atol=1e-14)


def test_a_detached_backward_is_refused_not_read_as_a_zero_jacobian():
    from captum_ext._autograd import NoDoubleBackwardError

    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(5, 7).double(), nn.Linear(7, 3).double()

    def model(x):
        return lin2(OnceRelu.apply(lin1(x)))

    x = torch.randn(4, 5, dtype=torch.float64)
    gn = GaussNewtonHessian(_graph(model, x), forward_func=model)
    with pytest.raises(NoDoubleBackwardError, match="detached"):
        gn.hvp(torch.randn(4, 5, dtype=torch.float64))
