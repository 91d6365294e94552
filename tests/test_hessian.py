import pytest
import torch
from torch import nn

from captum_ext.attr.hessian import (
    ExactHessian,
    build_loss_graph,
    choose_rank,
    logit_curvature_gap,
    low_rank_factor,
    softmax_covariance,
)

from ._nets import dense_loss_hessian, relu_cnn, relu_mlp, softplus_mlp


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_factor_equals_dense_hessian_mlp(seed):
    model = relu_mlp(seed=seed)
    x = torch.randn(3, 12, dtype=torch.float64)
    target = torch.tensor([0, 3, 1])
    graph = build_loss_graph(model, (x,), (), target)
    factor = low_rank_factor(graph, rank_tol=0.0)
    for i in range(3):
        h, g = dense_loss_hessian(model, x[i], int(target[i]))
        hb = factor.B[i] @ factor.B[i].T
        assert _rel(hb, h) < 1e-8
        assert _rel(factor.gradient[i], g) < 1e-12
        assert factor.top_eigenvalue()[i] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-8)


def test_closed_form_factor_equals_dense_hessian_cnn():
    model = relu_cnn()
    # BatchNorm in eval mode with non-trivial statistics is affine, so still piecewise linear
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    graph = build_loss_graph(model, (x,), (), None)
    factor = low_rank_factor(graph, rank_tol=0.0)
    for i in range(2):
        h, _ = dense_loss_hessian(model, x[i], int(graph.target[i]))
        assert _rel(factor.B[i] @ factor.B[i].T, h) < 1e-8


def test_closed_form_differs_on_softplus_net_and_auto_goes_exact():
    model = softplus_mlp()
    x = torch.randn(2, 12, dtype=torch.float64)
    graph = build_loss_graph(model, (x,), (), None)
    factor = low_rank_factor(graph, rank_tol=0.0)
    h, _ = dense_loss_hessian(model, x[0], int(graph.target[0]))
    assert _rel(factor.B[0] @ factor.B[0].T, h) > 1e-3
    graph = build_loss_graph(model, (x,), (), None)
    probe = logit_curvature_gap(
        graph, torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    )
    assert bool((probe > 1e-3).all())

    from captum_ext import CASO

    caso = CASO(model)
    caso.attribute(x, lambda2=50.0)
    assert caso.last_details.hessian == "exact"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_curvature_probe_is_zero_for_piecewise_linear_nets_even_when_confident(dtype):
    for model, shape in ((relu_mlp(dtype=dtype), (4, 12)), (relu_cnn(dtype=dtype), (4, 2, 6, 6))):
        with torch.no_grad():
            model[-1].weight.mul_(2000.0)  # p_t within float32 round-off of 1
        x = torch.randn(*shape, dtype=dtype)
        graph = build_loss_graph(model, (x,), (), None)
        assert float(graph.probs.max(1).values.min()) > 1 - 1e-5
        probe = logit_curvature_gap(
            graph,
            torch.randn(4, x[0].numel(), dtype=dtype),
            torch.randn(4, graph.logits.shape[1], dtype=dtype),
        )
        assert float(probe.max()) == 0.0


def test_exact_hvp_and_power_iteration_match_dense():
    model = softplus_mlp()
    x = torch.randn(2, 12, dtype=torch.float64)
    graph = build_loss_graph(model, (x,), (), torch.tensor([1, 2]))
    exact = ExactHessian(graph)
    v = torch.randn(2, 3, 12, dtype=torch.float64)
    hv = exact.hvp(v)
    for i in range(2):
        h, g = dense_loss_hessian(model, x[i], [1, 2][i])
        assert torch.allclose(hv[i], v[i] @ h.T, atol=1e-12)
        assert torch.allclose(exact.gradient[i], g, atol=1e-12)
        top = float(torch.linalg.eigvalsh(h)[-1])
        assert float(exact.top_eigenvalue(n_iter=300)[i]) == pytest.approx(top, rel=1e-6)


def test_choose_rank_tolerance_semantics():
    lam = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]], dtype=torch.float64)
    assert int(choose_rank(lam, 0.0)) == 4
    assert int(choose_rank(lam, 0.05)) == 3  # dropping 0.05 of mass 1.0 is allowed
    assert int(choose_rank(lam, 0.2)) == 2
    assert int(choose_rank(lam, 0.2, max_rank=1)) == 1
    with pytest.raises(ValueError):
        choose_rank(lam, -1.0)


def test_rank_tolerance_bounds_hessian_error():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 30)).double().eval()
    x = torch.randn(1, 10, dtype=torch.float64) * 3
    graph = build_loss_graph(model, (x,), (), None)
    full = low_rank_factor(graph, rank_tol=0.0)
    graph = build_loss_graph(model, (x,), (), None)
    cut = low_rank_factor(graph, rank_tol=1e-2)
    assert cut.B.shape[2] < full.B.shape[2]
    h_full = full.B[0] @ full.B[0].T
    err = torch.linalg.matrix_norm(h_full - cut.B[0] @ cut.B[0].T, ord=2)
    jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[0])
    a = softmax_covariance(torch.softmax(model(x).detach(), 1))[0]
    bound = 1e-2 * torch.trace(a) * torch.linalg.matrix_norm(jac, ord=2) ** 2
    assert float(err) <= float(bound) + 1e-12
    assert float(cut.discarded[0]) <= 1e-2 * float(torch.trace(a)) + 1e-15


def test_woodbury_solve_matches_dense_inverse():
    model = relu_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    graph = build_loss_graph(model, (x,), (), None)
    f = low_rank_factor(graph, rank_tol=0.0)
    lam2 = f.top_eigenvalue() / 2 + 0.3
    sol = f.solve_shifted(f.gradient, lam2)
    for i in range(3):
        h = f.B[i] @ f.B[i].T
        ref = torch.linalg.solve(2 * lam2[i] * torch.eye(12, dtype=torch.float64) - h, f.gradient[i])
        assert torch.allclose(sol[i], ref, rtol=1e-10, atol=1e-14)
