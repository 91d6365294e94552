"""Certified solvers for the CASO problem: Lanczos for ``L``, conjugate gradients, accelerated prox-gradient.

Pure tensor maths, no models. The Hessian enters only through a *curvature operator*: any object with
``hvp(v) -> H v`` for ``v`` of shape ``(n, m, d)`` (``n`` examples, ``m`` problems per example sharing
one Hessian, ``d`` features), linear in ``v`` (:class:`CurvatureOperator`). The closed-form factor,
the double-backward :class:`~captum_ext.attr.curvature.exact.ExactHessian` and matrix-free Gauss-Newton
operators all qualify.

The problem, per example and per problem (minimisation form of CASO)::

    min_D  F(D) = s(D) + lambda1 ||D||_1,   s(D) = -g.D - 1/2 D.H D + lambda2 ||D||^2

is strongly convex with modulus ``mu = 2 lambda2 - L`` exactly when ``2 lambda2 > L = lambda_max(H)``.
Every solver here returns, per problem, a *certified* bound on ``||D - D*|| / ||D||``: for any ``z``
and any element ``u`` of the subdifferential ``dF(z)``, strong convexity gives
``||z - D*|| <= ||u|| / mu``. With ``lambda1 = 0``, ``u`` is the linear-system residual; with
``lambda1 > 0`` it is ``G + grad s(z) - grad s(y)`` for the proximal-gradient mapping ``G`` (exact,
from the products already computed). ``mu`` uses the larger of the Lanczos estimate of ``L`` (Ritz
value plus its residual) and every Rayleigh quotient seen during the solve, which are lower bounds
on ``L``. A Rayleigh quotient ``v.Hv / v.v >= 2 lambda2`` proves the problem is not concave: such
problems are flagged (``nonconcave``) and never reported as converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .objective import HVP, _dot, soft_threshold


class CurvatureOperator(Protocol):
    """Anything that multiplies the (per-example) input Hessian with a batch of vectors.

    ``hvp(v)`` takes ``(n, d)`` or ``(n, m, d)`` and returns ``H v`` of the same shape; it must be
    linear in ``v``.
    """

    def hvp(self, v: Tensor) -> Tensor: ...


def default_tol(dtype: torch.dtype) -> float:
    """Default relative error tolerance of a solve: ``1e-8`` in float64, ``1e-4`` in lower precision."""
    return 1e-8 if dtype == torch.float64 else 1e-4


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


@dataclass
class SolveResult:
    """Output of :func:`conjugate_gradient` and :func:`accelerated_prox_gradient`, per problem ``(n, m)``.

    Attributes:
        delta: solution ``(n, m, d)``.
        h_delta: ``H delta`` ``(n, m, d)``.
        converged: certified ``error_bound <= tol`` and not ``nonconcave``.
        error_bound: certified bound on ``||delta - D*|| / ||delta||`` (``inf`` when the problem is
            not concave).
        iterations: iterations used.
        nonconcave: a Rayleigh quotient ``>= 2 lambda2`` was observed (the problem has no maximiser).
        rayleigh_max: largest Rayleigh quotient ``v.Hv / v.v`` seen (a lower bound on ``L``).
        n_hvp: batched operator calls.
    """

    delta: Tensor
    h_delta: Tensor
    converged: Tensor
    error_bound: Tensor
    iterations: Tensor
    nonconcave: Tensor
    rayleigh_max: Tensor
    n_hvp: int


def _certify(
    u_norm: Tensor, x: Tensor, lam2: Tensor, l_upper: Tensor, rq_max: Tensor
) -> tuple[Tensor, Tensor]:
    """``(relative error bound, nonconcave)`` from a subgradient norm, both ``(n, m, 1)``."""
    mu = 2.0 * lam2 - torch.maximum(l_upper, rq_max)
    nonconcave = (rq_max >= 2.0 * lam2) | ~(mu > 0)
    tiny = torch.finfo(x.dtype).tiny
    bound = torch.where(u_norm == 0, torch.zeros_like(u_norm), u_norm / (mu.clamp_min(tiny) * _norm(x)))
    bound = torch.where(nonconcave, torch.full_like(bound, math.inf), bound)
    return bound, nonconcave


def _rayleigh(v: Tensor, hv: Tensor) -> Tensor:
    vv = _dot(v, v)
    return torch.where(vv > 0, _dot(v, hv) / vv.clamp_min(torch.finfo(v.dtype).tiny), -math.inf)


def _broadcast(g: Tensor, *scalars: Tensor | float) -> tuple[Tensor, ...]:
    n, m, _ = g.shape
    out = []
    for s in scalars:
        t = torch.as_tensor(s, dtype=g.dtype, device=g.device)
        out.append(t.expand(n, m, 1) if t.dim() else t.reshape(1, 1, 1).expand(n, m, 1))
    return tuple(out)


def conjugate_gradient(
    g: Tensor,
    hvp: HVP,
    lambda2: Tensor | float,
    *,
    l_upper: Tensor | float,
    tol: float,
    max_iter: int = 1000,
) -> SolveResult:
    """Solve ``(2 lambda2 I - H) D = g`` (CASO with ``lambda1 = 0``) by batched conjugate gradients.

    Each problem stops at the first iterate whose certified error bound ``||r|| / (mu ||D||)`` is at
    most ``tol`` (``mu = 2 lambda2 - L``); the bound is then re-checked with the true residual
    (one more product) and CG restarts from there if round-off made the recursive residual
    optimistic. A curvature ``p.(2 lambda2 I - H)p <= 0`` (the system is not positive definite)
    flags the problem ``nonconcave`` and stops it.

    Args:
        g: right-hand sides ``(n, m, d)``.
        hvp: curvature operator product ``(n, m, d) -> (n, m, d)``.
        lambda2: ``(n, m, 1)`` or broadcastable.
        l_upper: estimate of ``L = lambda_max(H)`` used in the bound, ``(n, m, 1)`` or broadcastable.
        tol: relative error tolerance.
        max_iter: total iterations (products) per problem.

    Returns:
        :class:`SolveResult`.

    Examples:
        >>> H = torch.tensor([[[2.0, 1.0], [1.0, 3.0]]], dtype=torch.float64)
        >>> res = conjugate_gradient(torch.ones(1, 1, 2, dtype=torch.float64),
        ...                          lambda v: v @ H.transpose(1, 2), 5.0, l_upper=3.62, tol=1e-12)
        >>> res.delta  # solves (10 I - H) D = 1
        tensor([[[0.1455, 0.1636]]], dtype=torch.float64)
        >>> bool(res.converged)
        True
    """
    lam2, l_up = _broadcast(g, lambda2, l_upper)
    x = torch.zeros_like(g)
    hx = torch.zeros_like(g)
    rq_max = torch.full_like(lam2, -math.inf)
    active = torch.ones_like(lam2, dtype=torch.bool)
    nonconcave = torch.zeros_like(active)
    iters = torch.zeros_like(lam2, dtype=torch.long)
    bound = torch.full_like(lam2, math.inf)
    n_hvp, used = 0, 0
    while used < max_iter and bool(active.any()):
        # one CG cycle from x with the true residual
        r = torch.where(active, g - (2.0 * lam2 * x - hx), torch.zeros_like(g))
        p = r.clone()
        rr = _dot(r, r)
        running = active.clone()
        while used < max_iter and bool(running.any()):
            hp = hvp(p)
            n_hvp += 1
            used += 1
            pap = 2.0 * lam2 * _dot(p, p) - _dot(p, hp)
            rq_max = torch.where(running, torch.maximum(rq_max, _rayleigh(p, hp)), rq_max)
            bad = running & ~(pap > 0) & (rr > 0)
            nonconcave = nonconcave | bad
            step = torch.where(running & ~bad & (rr > 0), rr / pap.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
            x = x + step * p
            hx = hx + step * hp
            r = r - step * (2.0 * lam2 * p - hp)
            iters = iters + running.long()
            rr_new = _dot(r, r)
            est, nc = _certify(rr_new.sqrt(), x, lam2, l_up, rq_max)
            stop = running & (nc | bad | (est <= tol) | (rr_new == 0))
            running = running & ~stop
            beta = torch.where(running, rr_new / rr.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
            p = torch.where(running, r + beta * p, torch.zeros_like(p))
            rr = rr_new
        # certify with the true residual (hx is exact up to round-off of the linear combination)
        hx_true = hvp(x)
        n_hvp += 1
        hx = torch.where(active, hx_true, hx)
        true_r = g - (2.0 * lam2 * x - hx)
        rq_max = torch.where(active, torch.maximum(rq_max, _rayleigh(x, hx)), rq_max)
        bound_now, nc = _certify(_norm(true_r), x, lam2, l_up, rq_max)
        nonconcave = nonconcave | (active & nc)
        bound = torch.where(active, bound_now, bound)
        active = active & ~nonconcave & (bound > tol)
    converged = (bound <= tol) & ~nonconcave
    return SolveResult(x, hx, converged, bound, iters, nonconcave, rq_max, n_hvp)


def accelerated_prox_gradient(
    g: Tensor,
    hvp: HVP,
    lambda1: Tensor | float,
    lambda2: Tensor | float,
    *,
    l_upper: Tensor | float,
    l_lower: Tensor | float = 0.0,
    tol: float,
    max_iter: int = 1000,
    decay: float = 0.5,
) -> SolveResult:
    """Accelerated proximal gradient (FISTA) with adaptive restart and a certified stopping rule.

    Minimises ``s(D) + lambda1 ||D||_1`` from ``D = 0``. The step is ``1 / (2 lambda2 - l_lower)``,
    the Lipschitz constant of ``grad s`` when ``l_lower <= lambda_min(H)`` (``0`` for a PSD
    Gauss-Newton ``H``); no fixed cap. Where ``l_lower`` overestimates ``lambda_min`` the sufficient
    decrease test shrinks the step by ``decay`` (per problem). Momentum restarts when the
    proximal-gradient direction disagrees with the last step (O'Donoghue & Candes, 2015). Each
    problem stops, frozen, once the certified bound ``||u|| / (mu ||z||)`` is at most ``tol``, where
    ``u = G + grad s(z) - grad s(y)`` lies in ``dF(z)``. One ``hvp`` call per iteration (plus one per
    backtracking trial); ``H y`` at the momentum point is combined from earlier products.

    Args:
        g: ``(n, m, d)``.
        hvp: curvature operator product ``(n, m, d) -> (n, m, d)``.
        lambda1: ``>= 0``, broadcastable to ``(n, m, 1)``.
        lambda2: broadcastable to ``(n, m, 1)``.
        l_upper: estimate of ``lambda_max(H)`` for the bound.
        l_lower: lower estimate of ``lambda_min(H)`` for the step (``0`` for PSD ``H``).
        tol: relative error tolerance.
        max_iter: iterations per problem.
        decay: backtracking factor.

    Returns:
        :class:`SolveResult`.

    Examples:
        >>> g = torch.tensor([[[1.0, -0.2]]], dtype=torch.float64)
        >>> zero = lambda v: torch.zeros_like(v)
        >>> res = accelerated_prox_gradient(g, zero, 0.5, 1.0, l_upper=0.0, tol=1e-10)
        >>> res.delta  # CAFO optimum soft(g, 0.5) / (2 * 1.0)
        tensor([[[0.2500, 0.0000]]], dtype=torch.float64)
    """
    lam1, lam2, l_up, l_lo = _broadcast(g, lambda1, lambda2, l_upper, l_lower)
    dtype = g.dtype
    tiny = torch.finfo(dtype).tiny
    sqrt_eps = math.sqrt(torch.finfo(dtype).eps)
    lsm = (2.0 * lam2 - torch.minimum(l_lo, torch.zeros_like(l_lo))).clamp_min(tiny)
    alpha = 1.0 / lsm
    x = torch.zeros_like(g)
    hx = torch.zeros_like(g)
    y, hy = x, hx
    out, h_out = x.clone(), hx.clone()
    t = torch.ones_like(lam2)
    rq_max = torch.full_like(lam2, -math.inf)
    active = torch.ones_like(lam2, dtype=torch.bool)
    nonconcave = torch.zeros_like(active)
    iters = torch.zeros_like(lam2, dtype=torch.long)
    bound = torch.full_like(lam2, math.inf)
    n_hvp = 0

    for _ in range(max_iter):
        if not bool(active.any()):
            break
        grad_y = -g - hy + 2.0 * lam2 * y
        pending = active.clone()
        z, hz = y, hy
        for _trial in range(60):
            cand = soft_threshold(y - alpha * grad_y, alpha * lam1)
            h_cand = hvp(cand)
            n_hvp += 1
            diff = cand - y
            # s is quadratic, so the sufficient-decrease test s(z) <= s(y) + grad.d + |d|^2 / (2 alpha)
            # is exactly (2 lambda2 - d.Hd / d.d) alpha <= 1: tested on the curvature along the step,
            # where the step is well above the round-off of H y (function values would cancel)
            big = _norm(diff) >= sqrt_eps * _norm(cand)
            rq_step = torch.where(big, _rayleigh(diff, h_cand - hy), -math.inf)
            ok = ~big | ((2.0 * lam2 - rq_step) * alpha <= 1.0 + 8 * sqrt_eps)
            take = pending & ok
            z = torch.where(take, cand, z)
            hz = torch.where(take, h_cand, hz)
            rq_max = torch.where(pending, torch.maximum(rq_max, rq_step), rq_max)
            rq_max = torch.where(pending, torch.maximum(rq_max, _rayleigh(cand, h_cand)), rq_max)
            pending = pending & ~ok & (rq_max < 2.0 * lam2)
            if not bool(pending.any()):
                break
            alpha = torch.where(pending, alpha * decay, alpha)
        diff, hdiff = z - y, hz - hy
        # two elements of dF(z): G + grad s(z) - grad s(y), and the minimum-norm one; the first only
        # where the step is above the round-off of y (else z == y would fake a zero)
        u_step = _norm(-diff / alpha + 2.0 * lam2 * diff - hdiff)
        u_min = _norm(_min_norm_subgradient(z, hz, g, lam1, lam2))
        real_step = _norm(diff) > 16 * torch.finfo(dtype).eps * _norm(y)
        u_norm = torch.where(real_step, torch.minimum(u_step, u_min), u_min)
        est, nc = _certify(u_norm, z, lam2, l_up, rq_max)
        iters = iters + active.long()
        nonconcave = nonconcave | (active & nc)
        out = torch.where(active, z, out)
        h_out = torch.where(active, hz, h_out)
        bound = torch.where(active, est, bound)
        active = active & ~nc & (est > tol)
        # adaptive restart (gradient scheme), then Nesterov momentum
        restart = _dot(y - z, z - x) > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        c = (t - 1.0) / t_next
        y, hy = z + c * (z - x), hz + c * (hz - hx)
        x, hx, t = z, hz, t_next
    converged = (bound <= tol) & ~nonconcave
    return SolveResult(out, h_out, converged, bound, iters, nonconcave, rq_max, n_hvp)


def certify(
    delta: Tensor,
    h_delta: Tensor,
    g: Tensor,
    lambda1: Tensor | float,
    lambda2: Tensor | float,
    l_upper: Tensor | float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Certified relative error bound of any candidate ``delta`` (e.g. from a closed form or FISTA).

    Uses the minimum-norm element of ``dF(delta)`` (``grad s + lambda1 sign(delta)`` on the support,
    ``max(|grad s| - lambda1, 0)`` off it) and ``mu = 2 lambda2 - max(l_upper, delta.H delta / |delta|^2)``.
    No extra Hessian products.

    Returns:
        ``(error_bound, nonconcave, rayleigh)``, each ``(n, m, 1)``.
    """
    lam1, lam2, l_up = _broadcast(g.expand_as(delta), lambda1, lambda2, l_upper)
    u = _min_norm_subgradient(delta, h_delta, g, lam1, lam2)
    rq = _rayleigh(delta, h_delta)
    bound, nonconcave = _certify(_norm(u), delta, lam2, l_up, rq)
    return bound, nonconcave, rq


def _min_norm_subgradient(delta: Tensor, h_delta: Tensor, g: Tensor, lam1: Tensor, lam2: Tensor) -> Tensor:
    grad = -g - h_delta + 2.0 * lam2 * delta
    return torch.where(delta != 0, grad + lam1 * torch.sign(delta), soft_threshold(grad, lam1))
