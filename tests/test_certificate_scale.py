"""The certified solvers' error bounds hold at any scale of the gradient and the Hessian.

Confident predictions give float32 gradients of 1e-30 and below, whose squares underflow: a residual
norm computed from them reads zero and certified anything (the accelerated solver returned
``converged=True``, ``error_bound=0`` with a true error of 0.99). The oracle is a float64 proximal-gradient
run (numpy only) on the same float32 data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks._oracles import prox_gradient_oracle
from captum_ext.attr.solvers import accelerated_prox_gradient, certify, conjugate_gradient

TOL32 = 1e-4  # the float32 default


def low_rank_problem(scale_g: float, scale_h: float, n: int = 4, d: int = 300, r: int = 6, ratio=0.505):
    """float32 ``B`` (``H = B B^T``, ``L ~ scale_h``), ``g ~ scale_g``, ``lambda2 = ratio L`` (tight)."""
    gen = torch.Generator().manual_seed(3)
    B = torch.randn(n, d, r, generator=gen, dtype=torch.float64) * (scale_h / d) ** 0.5
    g = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale_g
    B, g = B.float(), g.float()
    L = torch.linalg.eigvalsh(B.double().transpose(1, 2) @ B.double())[:, -1]
    return B, g, ratio * L, g.abs().median(1).values.double()


def true_errors(B, g, lam1, lam2, delta):
    out = []
    for i in range(B.shape[0]):
        Bi, gi = B[i].double().numpy(), g[i].double().numpy()
        ref = prox_gradient_oracle(Bi, gi, float(lam1[i]), float(lam2[i]), rtol=1e-12)
        out.append(np.linalg.norm(delta[i].double().numpy() - ref) / np.linalg.norm(ref))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 1e-12, 1e-25])
def test_accelerated_solver_bound_is_never_below_the_true_error(scale):
    B, g, lam2, lam1 = low_rank_problem(scale, scale * 1e3)
    hvp = lambda v: torch.einsum("ndr,nmr->nmd", B, torch.einsum("ndr,nmd->nmr", B, v))  # noqa: E731
    res = accelerated_prox_gradient(
        g[:, None], hvp, lam1.float()[:, None, None], lam2.float()[:, None, None],
        l_upper=lam2.float()[:, None, None] / 0.505, tol=TOL32, max_iter=5000,
    )  # fmt: skip
    err = true_errors(B, g, lam1, lam2, res.delta[:, 0])
    bound = res.error_bound.reshape(-1).double()
    assert bool((bound >= err).all()), (bound, err)
    conv = res.converged.reshape(-1)
    assert bool((err[conv] <= TOL32).all())


@pytest.mark.parametrize("scale", [1.0, 1e-25])
def test_conjugate_gradient_bound_is_never_below_the_true_error(scale):
    B, g, lam2, _ = low_rank_problem(scale, scale * 1e3, ratio=0.6)
    hvp = lambda v: torch.einsum("ndr,nmr->nmd", B, torch.einsum("ndr,nmd->nmr", B, v))  # noqa: E731
    res = conjugate_gradient(
        g[:, None], hvp, lam2.float()[:, None, None], l_upper=lam2.float()[:, None, None] / 0.6, tol=TOL32
    )
    H = B.double() @ B.double().transpose(1, 2)
    eye = torch.eye(g.shape[1], dtype=torch.float64)
    ref = torch.linalg.solve(2 * lam2[:, None, None] * eye - H, g.double())
    err = (res.delta[:, 0].double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert bool((res.error_bound.reshape(-1).double() >= err).all())
    assert bool(res.converged.all())  # at 2 lambda2 = 1.2 L float32 reaches 1e-4 at every scale
    assert float(err.max()) <= TOL32


def test_certify_does_not_read_a_tiny_residual_as_zero():
    B, g, lam2, lam1 = low_rank_problem(1e-25, 1e-22)
    H = B @ B.transpose(1, 2)
    wrong = g[:, None] * 1e-3  # far from the optimum (~ g / (2 lambda2 - L)), tiny in absolute terms
    bound, nonconcave, _ = certify(
        wrong, (H @ wrong.transpose(1, 2)).transpose(1, 2), g[:, None], lam1.float()[:, None, None],
        lam2.float()[:, None, None], lam2.float()[:, None, None] / 0.505,
    )  # fmt: skip
    assert not bool(nonconcave.any())
    assert bool((bound > 0.5).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conjugate_gradient_certifies_without_recomputing_h_x(dtype):
    """The accumulated H x, with an allowance for its products' round-off, certifies the answer: no
    extra product for a true residual, and the bound still covers the true error."""
    B, g, lam2, _ = low_rank_problem(1.0, 1.0, ratio=0.6)
    B, g = B.to(dtype), g.to(dtype)
    hvp = lambda v: torch.einsum("ndr,nmr->nmd", B, torch.einsum("ndr,nmd->nmr", B, v))  # noqa: E731
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    res = conjugate_gradient(
        g[:, None], hvp, lam2.to(dtype)[:, None, None], l_upper=lam2.to(dtype)[:, None, None] / 0.6, tol=tol
    )
    assert bool(res.converged.all())
    assert res.n_hvp == int(res.iterations.max())  # one product per CG step, none to re-check
    H = B.double() @ B.double().transpose(1, 2)
    eye = torch.eye(g.shape[1], dtype=torch.float64)
    ref = torch.linalg.solve(2 * lam2[:, None, None] * eye - H, g.double())
    err = (res.delta[:, 0].double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert bool((res.error_bound.reshape(-1).double() >= err).all())
