"""With the default ``lambda2 = L/2 + c1`` on matrix-free paths, Lanczos stops once ``L`` is precise enough
for the answer (its residual below ``tol c1 / 2``), and the certificate includes the error that the
remaining uncertainty of ``L`` puts into the optimum: the bound holds against a dense float64 oracle that
uses the true ``L``."""

import pytest
import torch
from torch import nn

from captum_ext import CASO

from .test_caso_certified import scaled_mlp, stable_dense


@pytest.mark.parametrize(("c1", "tol"), [(10.0, 1e-8), (0.05, 1e-6), (10.0, 1e-3)])
@pytest.mark.parametrize("hessian", ["exact", "gauss_newton"])
def test_bound_with_the_uncertainty_of_L_holds_against_the_true_L(c1, tol, hessian):
    model = scaled_mlp(nn.Softplus(), scale=5.0, seed=1)
    if hessian == "gauss_newton":  # piecewise linear, so that the Gauss-Newton path is exact
        model = scaled_mlp(nn.ReLU(), scale=5.0, seed=1)
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    caso = CASO(model)
    out = caso.attribute(x, c1=c1, tol=tol, hessian=hessian, orientation="paper")
    det = caso.last_details
    assert bool(det.converged.all())
    for i in range(3):
        H, g = stable_dense(model, x[i], int(det.target[i]))
        L = float(torch.linalg.eigvalsh(H)[-1])
        lam2 = L / 2 + c1  # the paper's lambda2 with the exact L
        ref = torch.linalg.solve(2 * lam2 * torch.eye(8, dtype=H.dtype) - H, g)
        err = float((out[i] - ref).norm() / ref.norm())
        assert err <= float(det.error_bound[i]) + 1e-14, (i, err, float(det.error_bound[i]))
        assert float(det.error_bound[i]) <= tol


def test_a_large_margin_needs_fewer_products_for_L():
    model = scaled_mlp(nn.Softplus(), scale=5.0, d=40, hidden=30, c=10, seed=2)
    x = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    caso = CASO(model)
    caso.attribute(x, c1=1e3, tol=1e-6, hessian="exact")
    loose = caso.last_details.n_hvp
    caso.attribute(x, c1=1e-3, tol=1e-6, hessian="exact")
    assert loose < caso.last_details.n_hvp  # L matters less next to a large margin c1
