"""CASO's closed form at lambda1 > 0 runs the exact dual Newton solve (``captum_ext.attr.sparse_dual``):
it matches an independent float64 solver at tight lambda2, in a handful of Newton steps, and says so in
``last_details.solver``; SmoothCASO's group-mean factor, packed factor groups and ``sweep`` take it too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks._oracles import prox_gradient_oracle
from captum_ext import CASO, SmoothCASO

from ._nets import relu_mlp
from .test_caso_certified import stable_dense


def dense_factor(H: torch.Tensor) -> np.ndarray:
    """``B`` with ``B B^T = H`` for the PSD Hessian of a ReLU net (negative round-off dropped)."""
    w, V = torch.linalg.eigh(H)
    keep = w > 1e-12 * float(w.abs().max())
    return (V[:, keep] * w[keep].sqrt()).numpy()


@pytest.mark.parametrize("ratio", [0.501, 0.6])
def test_closed_form_sparse_caso_matches_independent_solver_at_tight_lambda2(ratio):
    model = relu_mlp(d=12, c=4, hidden=10, seed=1)
    x = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    caso = CASO(model)
    for i in range(3):
        xi = x[i : i + 1]
        caso.attribute(xi, hessian="closed_form")
        L = float(caso.last_details.top_eigenvalue[0])
        H, g = stable_dense(model, xi[0], int(caso.last_details.target[0]))
        lam1, lam2 = float(g.abs().median()), ratio * L
        out = caso.attribute(xi, hessian="closed_form", lambda1=lam1, lambda2=lam2, orientation="paper")
        det = caso.last_details
        assert det.solver == "dual_newton"
        assert bool(det.converged.all()) and int(det.iterations.max()) <= 10
        ref = prox_gradient_oracle(dense_factor(H), g.numpy(), lam1, lam2, rtol=1e-13)
        err = np.linalg.norm(out[0].numpy() - ref) / np.linalg.norm(ref)
        assert err <= 1e-6
        assert err <= float(det.error_bound[0]) + 1e-12  # the certificate is never below the true error


def test_sweep_and_sparsity_search_use_the_dual_solver():
    model = relu_mlp(seed=3)
    x = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    caso = CASO(model)
    maps = caso.sweep(x, [1e-4, 1e-3, 1e-2], hessian="closed_form")
    det = caso.last_details
    assert det.solver == "dual_newton" and bool(det.converged.all()) and maps.shape == (3, 4, 12)
    for k, lam1 in enumerate([1e-4, 1e-3, 1e-2]):  # each column is the single-lambda1 solve
        one = caso.attribute(x, lambda1=lam1, hessian="closed_form")
        torch.testing.assert_close(maps[k], one, rtol=1e-7, atol=1e-12)
    caso.attribute(x, sparsity=(0.5, 0.8), hessian="closed_form")
    assert caso.last_details.solver == "dual_newton" and bool(caso.last_details.converged.all())


def test_smooth_caso_group_mean_factor_uses_the_dual_solver():
    model = relu_mlp(seed=5)
    x = torch.randn(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    sc = SmoothCASO(model, nt_samples=4, stdevs=0.1)
    torch.manual_seed(0)
    out = sc.attribute(x, lambda1=1e-3, hessian="closed_form")
    det = sc.last_details
    assert det.solver == "dual_newton" and bool(det.converged.all()) and out.shape == x.shape
    assert float(det.error_bound.max()) <= 1e-8


def test_packed_factor_groups_use_the_dual_solver():
    model = relu_mlp(seed=7)
    x = torch.randn(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    caso = CASO(model)
    whole = caso.attribute(x, lambda1=1e-3, hessian="closed_form")
    # a budget for about two examples' factors forces several groups
    packed = caso.attribute(x, lambda1=1e-3, hessian="closed_form", max_memory=2 * 12 * 4 * 8 * 3)
    det = caso.last_details
    assert len(det.extra.get("factor_groups", [])) > 1
    assert det.solver == "dual_newton" and bool(det.converged.all())
    torch.testing.assert_close(packed, whole, rtol=1e-7, atol=1e-12)


def test_ranks_one_apart_keep_the_batch_in_one_factor():
    """Splitting a batch by rank costs a forward per group; ranks 1 and 2 do not repay it."""
    from benchmarks.bench_sparse_dual import confident_cnn

    model, x = confident_cnn()
    caso = CASO(model)
    caso.attribute(x[:8], lambda1=1e-3, hessian="closed_form")
    det = caso.last_details
    assert sorted(set(det.rank.tolist())) == [1, 2]
    assert "factor_groups" not in det.extra and det.solver == "dual_newton"
