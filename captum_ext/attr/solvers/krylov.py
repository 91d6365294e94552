"""One Krylov space for ``L`` and the ``lambda1 = 0`` solve: Lanczos started from the gradient.

CASO at ``lambda1 = 0`` solves ``(2 lambda2 I - H) D = g`` with ``lambda2 = L / 2 + c1`` (or an explicit
``lambda2``), so it needs ``L = lambda_max(H)`` and the solve. Both live in the Krylov space
``K_k(H, g) = span(g, H g, ..., H^(k-1) g)``:

* the solution of the system lies in ``K(H, g)`` for any ``lambda2`` (a polynomial in ``H`` applied to
  ``g``), and the Galerkin solution ``D_k = ||g|| V_k (2 lambda2 I - T_k)^(-1) e_1`` over the Lanczos
  basis ``V_k`` (``T_k = V_k^T H V_k`` tridiagonal) is what conjugate gradients would produce;
* the top Ritz value of ``T_k`` estimates ``L``; at high confidence ``g`` is close to the top eigenvector
  of ``H`` (Singla et al., 2019, Thm. 4) and a step or two suffice.

So every product serves both, and each example stops once the certified error of ``D_k`` -- the
residual bound ``||g - (2 lambda2 I - H) D_k|| / (mu ||D_k||)`` with ``mu = 2 lambda2 - (top + Ritz
residual)``, plus, for the default ``lambda2``, the error ``e / (2 c1 - e)`` that the uncertainty ``e``
of ``L`` puts into ``lambda2`` -- meets the tolerance, not when ``L`` itself is precise: ``e`` needs to
be below ``0.9 tol c1`` only (a few percent of ``L`` when ``L << c1``), the criterion a separate Lanczos
run for ``L`` uses. ``H D_k`` is a
combination of the stored products ``H v_j`` (no recurrence), so the residual is that of the returned
``D_k``; the caller re-certifies it in float64 (:func:`~captum_ext.attr.solvers.certified.certify`).

What the space cannot see: a direction of ``H`` orthogonal to ``K(H, g)`` does not change the solution
for a given ``lambda2``, only ``L``; the Ritz value is the largest curvature that ``g`` reaches, the
same information power iteration from ``g`` (the paper) or the certified solves' Rayleigh quotients have.

Pure tensor maths: ``H`` enters only through ``hvp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .lanczos import LanczosRecurrence
from .objective import HVP


@dataclass
class LanczosSolveResult:
    """Output of :func:`lanczos_solve`, per example.

    Attributes:
        delta: ``D`` ``(n, d)``.
        h_delta: ``H D`` ``(n, d)``, from the stored products.
        lambda2: the ``lambda2`` the solve used ``(n,)`` (``top / 2 + c1`` by default).
        top: largest Ritz value, clamped at 0 ``(n,)`` (the estimate of ``L``).
        upper: ``top`` plus the top Ritz pair's residual ``(n,)`` (an eigenvalue lies below it).
        bottom: smallest Ritz value ``(n,)``.
        estimate: the internal error estimate at the stop (residual bound plus ``lambda2`` error) ``(n,)``.
        converged: ``estimate <= tol`` or an invariant space was found ``(n,)``.
        steps: products used per example ``(n,)``.
        n_hvp: batched operator calls.
    """

    delta: Tensor
    h_delta: Tensor
    lambda2: Tensor
    top: Tensor
    upper: Tensor
    bottom: Tensor
    estimate: Tensor
    converged: Tensor
    steps: Tensor
    n_hvp: int


def _lambda2_error(err: Tensor, c1: float) -> Tensor:
    """Relative error of the optimum caused by an error ``err`` of ``L`` in ``lambda2 = L / 2 + c1``."""
    margin = 2.0 * c1 - err
    return torch.where(margin > 0, err / margin.clamp_min(torch.finfo(err.dtype).tiny), math.inf)


def lanczos_solve(
    hvp: HVP,
    g: Tensor,
    *,
    c1: float,
    lambda2: float | None = None,
    tol: float,
    max_iter: int = 64,
    l_rtol: float = 1e-4,
) -> LanczosSolveResult:
    """``L`` and the ``lambda1 = 0`` CASO solve from one Lanczos run started at ``g`` (module docstring).

    Batched over examples with full reorthogonalisation; each example's values are frozen at its own
    stop, so the result does not depend on the rest of the batch. The run works on ``g / ||g||_inf``
    (a confident prediction's gradient of ``1e-30`` would otherwise square to zero in float32).

    Args:
        hvp: ``(n, d) -> (n, d)``, linear and symmetric.
        g: gradients ``(n, d)``.
        c1: the default ``lambda2 = L / 2 + c1`` (used when ``lambda2`` is ``None``).
        lambda2: an explicit ``lambda2`` (then ``L`` only enters ``mu``).
        tol: relative error target of ``D``; the run stops at ``0.9 tol`` to leave room for the
            caller's float64 certificate.
        max_iter: at most this many products (and at most ``d``).
        l_rtol: with an explicit ``lambda2``, ``L`` enters only ``mu``: the run also waits for the top
            Ritz residual to fall below ``l_rtol`` times the spectral scale.

    Returns:
        :class:`LanczosSolveResult`. With an explicit ``lambda2 <= top / 2`` the example stops unsolved
        (``converged`` False, ``estimate`` infinite): the caller must refuse it.

    Examples:
        >>> H = torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))[None]
        >>> g = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
        >>> res = lanczos_solve(lambda v: (H @ v[..., None])[..., 0], g, c1=1.0, tol=1e-10)
        >>> float(res.top), int(res.steps)  # g touches every eigenvector: the space is all of R^3
        (3.0, 3)
        >>> torch.allclose(res.delta, g / (2 * res.lambda2[:, None] - H.diagonal(dim1=1, dim2=2)))
        True
    """
    if g.dim() != 2:
        raise ValueError(f"g must have shape (n, d), got {tuple(g.shape)}")
    n, d = g.shape
    dtype, device = g.dtype, g.device
    scale_g = g.abs().amax(1, keepdim=True)
    zero_g = scale_g[:, 0] == 0
    gs = g / torch.where(zero_g[:, None], torch.ones_like(scale_g), scale_g)
    gnorm = gs.norm(dim=1)
    rec = LanczosRecurrence(gs)  # a zero gradient gets a constant start (its D = 0 exactly)
    products = []
    out = {
        k: torch.zeros(n, dtype=dtype, device=device)
        for k in ("lambda2", "top", "upper", "bottom", "estimate")
    }
    delta = torch.zeros_like(gs)
    h_delta = torch.zeros_like(gs)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    conv = torch.zeros_like(done)
    k_max = max(1, min(int(max_iter), d))
    for j in range(k_max):
        w = hvp(rec.current)
        products.append(w)
        step = rec.absorb(w)
        theta, S, b, spread, invariant, stack = (
            step.theta, step.S, step.b, step.spread, step.invariant, step.basis,
        )  # fmt: skip
        top = theta[:, -1].clamp_min(0)
        res = torch.where(invariant, torch.zeros_like(b), b * S[:, -1, -1].abs())
        upper = top + res
        if lambda2 is None:
            lam2 = top / 2 + c1
            l2_err = _lambda2_error(upper - top, c1)
        else:
            lam2 = torch.full_like(top, float(lambda2))
            l2_err = torch.zeros_like(top)
        # Galerkin solution in the basis: y = ||g|| S (2 lambda2 - theta)^-1 S^T e_1
        shift = 2 * lam2[:, None] - theta
        solvable = (shift > 0).all(1)
        coef = gnorm[:, None] * S[:, 0, :] / torch.where(shift > 0, shift, torch.ones_like(shift))
        y = torch.einsum("nij,nj->ni", S, coef)
        dk = torch.einsum("nkd,nk->nd", stack, y)
        hdk = torch.einsum("nkd,nk->nd", torch.stack(products, 1), y)
        resid = (gs - 2 * lam2[:, None] * dk + hdk).norm(dim=1)
        dnorm = dk.norm(dim=1)
        rq = (dk * hdk).sum(1) / dnorm.square().clamp_min(torch.finfo(dtype).tiny)
        mu = 2 * lam2 - torch.maximum(upper, rq)
        bound = torch.where(
            (mu > 0) & solvable, resid / (mu * dnorm).clamp_min(torch.finfo(dtype).tiny), math.inf
        )
        bound = torch.where(zero_g, torch.zeros_like(bound), bound)  # D = 0 exactly
        estimate = bound + l2_err
        # L must be resolved as tightly as a separate Lanczos run would resolve it (lanczos_extremes with
        # atol = 0.9 tol c1, or the relative l_rtol for an explicit lambda2): a looser residual test lets
        # a Ritz value at the edge of a dense cluster pass for L while an isolated top eigenvalue, weakly
        # present in g, is still to come
        l_ok = res <= (0.9 * tol * c1 if lambda2 is None else l_rtol * spread)
        ok = solvable & l_ok & (estimate <= 0.9 * tol)
        stop = ok | invariant | ~solvable | (j == d - 1) | (j == k_max - 1)
        newly = stop & ~done
        for key, val in (("lambda2", lam2), ("top", top), ("upper", upper), ("bottom", theta[:, 0])):
            out[key] = torch.where(newly, val, out[key])
        out["estimate"] = torch.where(newly, torch.where(solvable, estimate, math.inf), out["estimate"])
        delta = torch.where(newly[:, None], dk, delta)
        h_delta = torch.where(newly[:, None], hdk, h_delta)
        steps = torch.where(newly, torch.full_like(steps, j + 1), steps)
        conv = torch.where(newly, solvable & (ok | invariant), conv)
        done = done | stop
        if bool(done.all()):
            break
        rec.advance()
    unscale = torch.where(zero_g, torch.zeros_like(scale_g[:, 0]), scale_g[:, 0])[:, None]
    return LanczosSolveResult(
        delta=delta * unscale,
        h_delta=h_delta * unscale,
        lambda2=out["lambda2"],
        top=out["top"],
        upper=out["upper"],
        bottom=out["bottom"],
        estimate=out["estimate"],
        converged=conv,
        steps=steps,
        n_hvp=len(products),
    )
