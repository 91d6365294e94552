"""Batched Lanczos for the extreme eigenvalues of the per-example input Hessian (``L`` for CASO).

Pure tensor maths: the Hessian enters only through ``hvp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .objective import HVP


def _norm(a: Tensor) -> Tensor:
    return a.norm(dim=-1, keepdim=True)


@dataclass
class LanczosResult:
    """Extreme eigenvalue estimates of ``H`` per example, from :func:`lanczos_extremes`.

    Attributes:
        top: largest Ritz value ``(n,)`` (a lower bound on ``lambda_max``; an eigenvalue lies within
            ``residual`` of it).
        bottom: smallest Ritz value ``(n,)`` (an upper bound on ``lambda_min``).
        residual: Ritz residual norm ``||H y - top y||`` of the top pair ``(n,)``.
        converged: ``residual <= tol * spectral scale`` (or an invariant subspace was found) ``(n,)``.
        steps: Lanczos steps used per example ``(n,)``.
        n_hvp: batched operator calls.
    """

    top: Tensor
    bottom: Tensor
    residual: Tensor
    converged: Tensor
    steps: Tensor
    n_hvp: int

    @property
    def upper(self) -> Tensor:
        """``top + residual``: an upper bound on the eigenvalue the top Ritz value approximates."""
        return self.top + self.residual


def lanczos_extremes(
    hvp: HVP, start: Tensor, *, tol: float = 1e-4, max_iter: int = 64, atol: Tensor | float = 0.0
) -> LanczosResult:
    """Batched Lanczos with full reorthogonalisation for the extreme eigenvalues of ``H`` per example.

    Each example stops (its values frozen) at the first step where the top Ritz pair's residual is at
    most ``tol`` times the spectral scale ``max(|top|, |bottom|)``, or when its Krylov space becomes
    invariant (then the Ritz values are exact eigenvalues). Freezing per example makes the result
    independent of the other examples in the batch.

    Args:
        hvp: ``(n, d) -> (n, d)``, linear, symmetric.
        start: starting vectors ``(n, d)`` (need not be normalised; zero rows get a constant vector).
        tol: relative residual tolerance.
        max_iter: at most this many steps (and at most ``d``).
        atol: absolute residual tolerance, per example ``(n,)`` or a number: stop once
            ``residual <= tol * scale + atol``. For CASO the accuracy of ``L`` only matters relative to
            ``2 lambda2`` (``lambda2 = L/2 + c1``), so ``atol = tol * 2 * c1`` avoids chasing a tiny ``L``
            (confident predictions) into float32 round-off.

    Returns:
        :class:`LanczosResult`.

    Examples:
        >>> H = torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))[None]
        >>> hvp = lambda v: (H @ v[..., None])[..., 0]
        >>> res = lanczos_extremes(hvp, torch.ones(1, 3, dtype=torch.float64))
        >>> [round(float(res.top), 6), round(float(res.bottom), 6)]
        [3.0, -2.0]
    """
    n, d = start.shape
    dtype, device = start.dtype, start.device
    k_max = max(1, min(int(max_iter), d))
    v = start.clone()
    zero = _norm(v)[:, 0] == 0
    if bool(zero.any()):
        v[zero] = 1.0
    v = v / _norm(v)
    basis = [v]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    eps = torch.finfo(dtype).eps
    gen = torch.Generator(device="cpu").manual_seed(1)
    top = torch.zeros(n, dtype=dtype, device=device)
    bottom = torch.zeros_like(top)
    resid = torch.zeros_like(top)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    n_hvp = 0
    for j in range(k_max):
        w = hvp(basis[j])
        n_hvp += 1
        a = (basis[j] * w).sum(1)
        w = w - a[:, None] * basis[j]
        if j > 0:
            w = w - betas[-1][:, None] * basis[j - 1]
        stack = torch.stack(basis, 1)  # (n, j+1, d)
        for _ in range(2):
            w = w - torch.einsum("nkd,nk->nd", stack, torch.einsum("nkd,nd->nk", stack, w))
        b = w.norm(dim=1)
        alphas.append(a)
        T = torch.diag_embed(torch.stack(alphas, 1))
        if betas:
            off = torch.diag_embed(torch.stack(betas, 1), offset=1)
            T = T + off + off.transpose(1, 2)
        theta, S = torch.linalg.eigh(T)
        scale = torch.maximum(theta[:, -1].abs(), theta[:, 0].abs())
        res_j = b * S[:, -1, -1].abs()
        invariant = b <= 64 * eps * (scale + a.abs() + (betas[-1] if betas else 0.0))
        conv_j = invariant | (res_j <= tol * scale + atol) | (j == d - 1)
        newly = conv_j & ~done
        top = torch.where(newly, theta[:, -1], top)
        bottom = torch.where(newly, theta[:, 0], bottom)
        resid = torch.where(newly, torch.where(invariant, torch.zeros_like(res_j), res_j), resid)
        steps = torch.where(newly, torch.full_like(steps, j + 1), steps)
        done = done | conv_j
        if bool(done.all()) or j == k_max - 1:
            break
        # continue the recursion; an invariant example restarts from a fresh orthogonal direction
        if bool(invariant.any()):
            fresh = torch.randn(n, d, generator=gen, dtype=dtype).to(device)
            for _ in range(2):
                fresh = fresh - torch.einsum("nkd,nk->nd", stack, torch.einsum("nkd,nd->nk", stack, fresh))
            w = torch.where(invariant[:, None], fresh, w)
            b = torch.where(invariant, torch.zeros_like(b), b)
        betas.append(b)
        basis.append(w / _norm(w).clamp_min(torch.finfo(dtype).tiny))
    # examples still running at max_iter: report their last values, not converged
    last = ~done
    if bool(last.any()):
        top = torch.where(last, theta[:, -1], top)
        bottom = torch.where(last, theta[:, 0], bottom)
        resid = torch.where(last, res_j, resid)
        steps = torch.where(last, torch.full_like(steps, j + 1), steps)
    return LanczosResult(top, bottom, resid, done, steps, n_hvp)
