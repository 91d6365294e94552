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


@dataclass
class LanczosStep:
    """What one step of :class:`LanczosRecurrence` learned, per example.

    Attributes:
        a: the new diagonal entry of ``T`` ``(n,)``.
        b: the new off-diagonal entry (norm of the orthogonalised product) ``(n,)``.
        theta: Ritz values, ascending ``(n, k)``; ``S`` their eigenvectors in the basis ``(n, k, k)``.
        spread: ``max(|theta_max|, |theta_min|)`` ``(n,)``.
        invariant: the Krylov space stopped growing (``b`` is round-off) ``(n,)``.
        basis: the orthonormal basis so far ``(n, k, d)``.
    """

    a: Tensor
    b: Tensor
    theta: Tensor
    S: Tensor
    spread: Tensor
    invariant: Tensor
    basis: Tensor


class LanczosRecurrence:
    """Batched Lanczos with full reorthogonalisation, one product at a time: the recurrence that
    :func:`lanczos_extremes` and :func:`~captum_ext.attr.solvers.krylov.lanczos_solve` share.

    ``current`` is the vector to multiply next; :meth:`absorb` takes its product and returns the new
    Ritz pairs; :meth:`advance` moves on (an invariant example restarts from a fixed random direction
    orthogonal to its basis, so the batch can go on). Zero start rows get a constant vector.
    """

    def __init__(self, start: Tensor) -> None:
        v = start.clone()
        zero = _norm(v)[:, 0] == 0
        if bool(zero.any()):
            v[zero] = 1.0
        self.basis = [v / _norm(v)]
        self.alphas: list[Tensor] = []
        self.betas: list[Tensor] = []
        self._gen = torch.Generator(device="cpu").manual_seed(1)
        self._pending: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    @property
    def current(self) -> Tensor:
        return self.basis[-1]

    def absorb(self, product: Tensor) -> LanczosStep:
        """Orthogonalise ``H current`` against the basis and diagonalise the new ``T``."""
        v = self.basis[-1]
        a = (v * product).sum(1)
        w = product - a[:, None] * v
        if self.betas:
            w = w - self.betas[-1][:, None] * self.basis[-2]
        stack = torch.stack(self.basis, 1)  # (n, k, d)
        for _ in range(2):
            w = w - torch.einsum("nkd,nk->nd", stack, torch.einsum("nkd,nd->nk", stack, w))
        b = w.norm(dim=1)
        self.alphas.append(a)
        T = torch.diag_embed(torch.stack(self.alphas, 1))
        if self.betas:
            off = torch.diag_embed(torch.stack(self.betas, 1), offset=1)
            T = T + off + off.transpose(1, 2)
        theta, S = torch.linalg.eigh(T)
        spread = torch.maximum(theta[:, -1].abs(), theta[:, 0].abs())
        eps = torch.finfo(product.dtype).eps
        invariant = b <= 64 * eps * (spread + a.abs() + (self.betas[-1] if self.betas else 0.0))
        self._pending = (w, b, invariant, stack)
        return LanczosStep(a, b, theta, S, spread, invariant, stack)

    def advance(self) -> None:
        """Append the next basis vector (after :meth:`absorb`)."""
        assert self._pending is not None, "absorb() a product first"
        w, b, invariant, stack = self._pending
        if bool(invariant.any()):
            n, d = w.shape
            fresh = torch.randn(n, d, generator=self._gen, dtype=w.dtype).to(w.device)
            for _ in range(2):
                fresh = fresh - torch.einsum("nkd,nk->nd", stack, torch.einsum("nkd,nd->nk", stack, fresh))
            w = torch.where(invariant[:, None], fresh, w)
            b = torch.where(invariant, torch.zeros_like(b), b)
        self.betas.append(b)
        self.basis.append(w / _norm(w).clamp_min(torch.finfo(w.dtype).tiny))
        self._pending = None


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
    rec = LanczosRecurrence(start)
    top = torch.zeros(n, dtype=dtype, device=device)
    bottom = torch.zeros_like(top)
    resid = torch.zeros_like(top)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    n_hvp = 0
    for j in range(k_max):
        step = rec.absorb(hvp(rec.current))
        n_hvp += 1
        theta, scale, invariant = step.theta, step.spread, step.invariant
        res_j = step.b * step.S[:, -1, -1].abs()
        conv_j = invariant | (res_j <= tol * scale + atol) | (j == d - 1)
        newly = conv_j & ~done
        top = torch.where(newly, theta[:, -1], top)
        bottom = torch.where(newly, theta[:, 0], bottom)
        resid = torch.where(newly, torch.where(invariant, torch.zeros_like(res_j), res_j), resid)
        steps = torch.where(newly, torch.full_like(steps, j + 1), steps)
        done = done | conv_j
        if bool(done.all()) or j == k_max - 1:
            break
        rec.advance()
    # examples still running at max_iter: report their last values, not converged
    last = ~done
    if bool(last.any()):
        top = torch.where(last, theta[:, -1], top)
        bottom = torch.where(last, theta[:, 0], bottom)
        resid = torch.where(last, res_j, resid)
        steps = torch.where(last, torch.full_like(steps, j + 1), steps)
    return LanczosResult(top, bottom, resid, done, steps, n_hvp)
