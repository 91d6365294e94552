"""The closed form's gradient-aligned rows (:func:`gradient_aligned_pairs`): ``r`` backward passes instead
of ``r + 1`` when ``p - e_t`` lies in the kept eigen-span.

Oracles: the dense ``c x c`` matrix ``A`` (its nuclear-norm error against the returned bound), and dense
autograd Hessians and gradients of small float64 ReLU nets (``J^T A J`` is the whole Hessian there).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ext.attr.graph import build_loss_graph, softmax_covariance
from captum_ext.attr.hessian import low_rank_factor
from captum_ext.attr.softmax_eig import gradient_aligned_pairs, kept_eigenpairs, softmax_covariance_trace

from ._nets import dense_loss_hessian


def _residual(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    onehot = nn.functional.one_hot(target, probs.shape[1]).to(torch.bool)
    return torch.where(onehot, -probs.masked_fill(onehot, 0.0).sum(1, keepdim=True), probs)


def _aligned(probs, target, rank_tol):
    lam, U, rank, discarded = kept_eigenpairs(probs, rank_tol)
    res = _residual(probs, target)
    out = gradient_aligned_pairs(res, lam, U, discarded, softmax_covariance_trace(probs), rank_tol)
    return out, res, rank


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    classes=st.integers(2, 40),
    scale=st.floats(1.0, 60.0),
    rank_tol=st.sampled_from([1e-2, 1e-3, 1e-6]),
)
def test_bound_covers_the_true_error_and_rows_reproduce_the_residual(seed, classes, scale, rank_tol):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(3, classes, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    target = probs.argmax(1)
    out, res, _ = _aligned(probs, target, rank_tol)
    if out is None:
        return
    mu, R, a, bound = out
    r = R.shape[2]
    eye = torch.eye(r, dtype=torch.float64)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye.expand(3, r, r), rtol=0, atol=1e-12)
    scale_res = res.norm(dim=1, keepdim=True)
    assert bool(((R @ a[..., None])[..., 0] - res).norm(dim=1).le(1e-12 * scale_res[:, 0] + 1e-300).all())
    A = softmax_covariance(probs)
    approx = R @ torch.diag_embed(mu) @ R.transpose(1, 2)
    true = torch.linalg.svdvals(A - approx).sum(1)  # nuclear norm
    trace = softmax_covariance_trace(probs)
    slack = 1e-14 * classes * trace + 1e-300  # round-off of the oracle A and its SVD
    assert bool((true <= bound + slack).all()), (true, bound)
    assert bool((bound <= rank_tol * trace).all())
    assert bool((mu >= 0).all())


def test_when_the_rows_are_aligned():
    gen = torch.Generator().manual_seed(0)
    confident = torch.softmax(40 * torch.randn(4, 10, generator=gen, dtype=torch.float64), 1)
    out, _, rank = _aligned(confident, confident.argmax(1), 1e-3)
    assert out is not None and out[1].shape[2] == int(rank.max())
    # 100 classes, p_max ~ 0.5, rank_tol = 1e-2 (rank ~15): p - e_t is too far from the kept span
    gen = torch.Generator().manual_seed(0)
    unsure = torch.softmax(5.0 * torch.randn(4, 100, generator=gen, dtype=torch.float64), 1)
    out, _, rank = _aligned(unsure, unsure.argmax(1), 1e-2)
    assert int(rank.max()) < 99 and out is None
    # at full rank (c - 1) the kept span is all of 1^T x = 0, which holds p - e_t: always aligned
    out, _, rank = _aligned(unsure[:, :5].softmax(1), unsure[:, :5].argmax(1), 1e-3)
    assert int(rank.min()) == 4 and out is not None
    # rank_tol = 0 leaves no budget for the rotation: the exact rows are used
    out, _, _ = _aligned(confident, confident.argmax(1), 0.0)
    assert out is None


def test_a_one_hot_softmax_gives_zero_rows_without_nan():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    lam, U, _, discarded = kept_eigenpairs(probs, 1e-3)
    res = _residual(probs, torch.tensor([0, 0]))
    out = gradient_aligned_pairs(res, lam, U, discarded, softmax_covariance_trace(probs), 1e-3)
    assert out is not None  # A = 0 for the one-hot row and rank c - 1 for the other: both aligned
    mu, R, a, bound = out
    assert bool(torch.isfinite(R).all()) and float(a[0].abs().max()) == 0.0 and float(mu[0].max()) == 0.0
    assert float(bound[0]) == 0.0


def _confident_relu_mlp(seed: int, classes: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, classes))
    with torch.no_grad():
        model[-1].weight.mul_(8.0)
    return model.double().eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aligned_factor_against_dense_hessian_and_gradient(seed):
    """Saves the gradient's backward pass, and stays within the rank_tol contract of the Hessian:
    ``||H - B B^T||_2 <= bound ||J||_2^2`` with the exact gradient."""
    model = _confident_relu_mlp(seed)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    graph = build_loss_graph(model, (x,), (), None)
    probs, target = graph.probs, graph.target
    factor = low_rank_factor(graph, rank_tol=1e-3)
    r = factor.B.shape[2]
    assert factor.n_vjp == r, "the confident net should not need the gradient's own backward pass"
    for i in range(4):
        h, g = dense_loss_hessian(model, x[i], int(target[i]))
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[i])
        err = torch.linalg.matrix_norm(h - factor.B[i] @ factor.B[i].T, ord=2)
        allowed = factor.discarded[i] * torch.linalg.matrix_norm(jac, ord=2) ** 2
        assert float(err) <= float(allowed) * (1 + 1e-9) + 1e-14 * float(h.norm())
        assert float((factor.gradient[i] - g).norm()) <= 1e-11 * float(g.norm()) + 1e-300
    assert bool((factor.discarded <= 1e-3 * softmax_covariance_trace(probs)).all())


def test_exact_rows_when_rank_tol_is_zero_and_binary_models_need_one_pass():
    model = _confident_relu_mlp(0)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    factor = low_rank_factor(build_loss_graph(model, (x,), (), None), rank_tol=0.0)
    assert factor.n_vjp == factor.B.shape[2] + 1
    torch.manual_seed(1)
    binary = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).double().eval()
    graph = build_loss_graph(binary, (x,), (), None)
    factor = low_rank_factor(graph, rank_tol=1e-3)
    assert factor.B.shape[2] == 1 and factor.n_vjp == 1
    # the gradient from that column matches the gradient's own backward pass
    fresh = build_loss_graph(binary, (x,), (), None)
    ref = fresh.vjp(fresh.residual())
    torch.testing.assert_close(factor.gradient, ref, rtol=1e-12, atol=1e-300)
