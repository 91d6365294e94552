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
        method: the solver that produced it (``"certified"``; ``"dual_newton"`` for the closed form's
            sparse solve).
    """

    delta: Tensor
    h_delta: Tensor
    converged: Tensor
    error_bound: Tensor
    iterations: Tensor
    nonconcave: Tensor
    rayleigh_max: Tensor
    n_hvp: int
    method: str = "certified"


@dataclass
class _Units:
    """Per-problem units in which ``||g||_inf = 1`` and ``2 lambda2 = 1``.

    Confident predictions give gradients and curvatures of ``1e-30`` and below; their squares (residual
    norms, step tests) underflow in float32 and read zero, which would certify anything. With
    ``c = ||g||_inf`` and ``t = 2 lambda2``, ``D = (c / t) D'`` where ``D'`` solves the problem with
    ``g' = g / c``, ``lambda1' = lambda1 / c``, ``H' = H / t`` (so ``2 lambda2' = 1``); ``H D = c H' D'``.
    Relative error bounds are the same in both units.
    """

    c: Tensor
    t: Tensor

    @classmethod
    def of(cls, g: Tensor, lam2: Tensor) -> _Units:
        c = g.abs().amax(-1, keepdim=True)
        t = 2.0 * lam2
        # g = 0 (answer 0) and 2 lambda2 <= 0 (non-concave, flagged by the solver) keep their units
        return cls(torch.where(c > 0, c, torch.ones_like(c)), torch.where(t > 0, t, torch.ones_like(t)))

    def operator(self, hvp: HVP) -> HVP:
        return lambda v: hvp(v) / self.t

    def result(self, res: SolveResult) -> SolveResult:
        """``res`` (found in these units) in the caller's units."""
        res.delta = res.delta * (self.c / self.t)
        res.h_delta = res.h_delta * self.c
        res.rayleigh_max = res.rayleigh_max * self.t
        return res


def _final_certificate(
    res: SolveResult,
    g: Tensor,
    lam1: Tensor | float,
    lam2: Tensor,
    l_up: Tensor,
    l_lo: Tensor | float,
    tol: float,
    spread: Tensor | None = None,
) -> SolveResult:
    """Replace the running bound of ``res`` (scaled units) by the certificate of its returned ``delta``,
    evaluated in float64 (see :func:`_bound64`); ``converged`` follows it."""
    bound, concave = _bound64(res.delta, res.h_delta, g, lam1, lam2, l_up, l_lo, res.rayleigh_max, spread)
    res.nonconcave = res.nonconcave | ~concave
    bound = torch.where(res.nonconcave, torch.full_like(bound, math.inf), bound)
    res.error_bound = bound.to(res.delta.dtype)
    res.converged = (bound <= tol) & ~res.nonconcave
    return res


def _bound64(
    delta: Tensor,
    h_delta: Tensor,
    g: Tensor,
    lam1: Tensor | float,
    lam2: Tensor | float,
    l_up: Tensor | float,
    l_lo: Tensor | float,
    rq: Tensor,
    spread: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(bound, mu > 0)``, ``(n, m, 1)``: the relative error bound ``(||u|| + allowance) / (mu ||delta||)``
    in float64.

    ``u`` is the minimum-norm element of ``dF(delta)``, evaluated in float64 from the given tensors
    (so nothing underflows). ``allowance`` covers the round-off of the product ``H delta`` in the working
    dtype (its error, not part of ``u``): ``eps (sqrt(d) + 4) max(|l_up|, |l_lo|, |rq|) ||delta||``,
    the probabilistic bound on a length-``d`` inner product's rounding (Higham and Mary, 2019) scaled
    by the operator's norm (``||delta||`` is replaced by ``spread``, the sum of ``|step| ||p||`` when
    ``h_delta`` was accumulated from several products); plus the float64 evaluation's own elementwise
    round-off ``4 eps64`` of the
    terms' norms. ``inf`` where
    ``mu = 2 lambda2 - max(l_up, rq) <= 0`` (not concave).
    """
    f64 = torch.float64
    eps_w, eps64 = torch.finfo(delta.dtype).eps, torch.finfo(f64).eps
    d = delta.shape[-1]

    def as64(t: Tensor | float) -> Tensor:
        return torch.as_tensor(t, device=delta.device).to(f64)

    x, hx, g64 = delta.to(f64), h_delta.to(f64), g.to(f64)
    lam1_, lam2_, up, lo, rq_ = as64(lam1), as64(lam2), as64(l_up), as64(l_lo), as64(rq)
    u = _min_norm_subgradient(x, hx, g64, lam1_, lam2_).norm(dim=-1, keepdim=True)
    xn = x.norm(dim=-1, keepdim=True)
    op_norm = torch.maximum(torch.maximum(up.abs(), lo.abs()), rq_.nan_to_num(0.0, 0.0, 0.0).abs())
    scale = g64.norm(dim=-1, keepdim=True) + lam1_ * math.sqrt(d) + (2 * lam2_.abs() + op_norm) * xn
    nonzero = (xn > 0).to(f64)
    products = xn if spread is None else torch.maximum(xn, spread.to(f64))
    allowance = nonzero * (eps_w * (math.sqrt(d) + 4) * op_norm * products + 4 * eps64 * scale)
    mu = 2.0 * lam2_ - torch.maximum(up, rq_)
    num = u + allowance
    bound = torch.where(num == 0, torch.zeros_like(num), num / (mu.clamp_min(0) * xn))
    return torch.where(mu > 0, bound, torch.full_like(bound, math.inf)), mu > 0


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
    most ``tol / 2`` (``mu = 2 lambda2 - L``); the bound is then re-checked in float64 from ``x`` and the
    accumulated ``H x`` with an allowance for the round-off of its products, and only where that fails
    is ``H x`` recomputed (one more product) and CG restarted from the true residual. A curvature
    ``p.(2 lambda2 I - H)p <= 0`` (the system is not positive definite) flags the problem ``nonconcave``
    and stops it. The solve runs in units where ``||g||_inf = 1`` and
    ``2 lambda2 = 1``, and the returned bound is re-evaluated in float64 with a round-off allowance
    (:func:`certify`), so a tiny gradient (confident predictions) never reads as a zero residual.

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
    units = _Units.of(g, lam2)
    g, lam2, l_up, hvp = g / units.c, lam2 / units.t, l_up / units.t, units.operator(hvp)
    x = torch.zeros_like(g)
    hx = torch.zeros_like(g)
    rq_max = torch.full_like(lam2, -math.inf)
    active = torch.ones_like(lam2, dtype=torch.bool)
    nonconcave = torch.zeros_like(active)
    iters = torch.zeros_like(lam2, dtype=torch.long)
    bound = torch.full_like(lam2, math.inf)
    # sum of |step| ||p||: H x is accumulated from that many products' worth of vectors (round-off scale)
    spread = torch.zeros_like(lam2)
    n_hvp, used = 0, 0
    while used < max_iter and bool(active.any()):
        # one CG cycle from x with the residual of (x, H x)
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
            spread = spread + step.abs() * _norm(p)
            r = r - step * (2.0 * lam2 * p - hp)
            iters = iters + running.long()
            rr_new = _dot(r, r)
            est, nc = _certify(rr_new.sqrt(), x, lam2, l_up, rq_max)
            stop = running & (nc | bad | (est <= 0.5 * tol) | (rr_new == 0))
            running = running & ~stop
            beta = torch.where(running, rr_new / rr.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
            p = torch.where(running, r + beta * p, torch.zeros_like(p))
            rr = rr_new
        # the accumulated H x is exact up to the round-off of its products and their combination: the
        # float64 certificate with that allowance decides; only where it fails is H x recomputed (one
        # product; a recursive residual made optimistic by round-off then restarts CG)
        cheap, _ = _bound64(x, hx, g, 0.0, lam2, l_up, 0.0, rq_max, spread)
        redo = active & ~nonconcave & (cheap > 0.5 * tol)
        if bool(redo.any()) and used < max_iter:
            hx = torch.where(redo, hvp(x), hx)
            n_hvp += 1
            used += 1
            spread = torch.where(redo, _norm(x), spread)
            rq_max = torch.where(redo, torch.maximum(rq_max, _rayleigh(x, hx)), rq_max)
        true_r = g - (2.0 * lam2 * x - hx)
        bound_now, nc = _certify(_norm(true_r), x, lam2, l_up, rq_max)
        nonconcave = nonconcave | (active & nc)
        bound = torch.where(active, bound_now, bound)
        active = active & ~nonconcave & (bound > 0.5 * tol)
    res = SolveResult(x, hx, bound <= tol, bound, iters, nonconcave, rq_max, n_hvp)
    return units.result(_final_certificate(res, g, 0.0, lam2, l_up, 0.0, tol, spread))


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
    problem stops, frozen, once the certified bound ``||u|| / (mu ||z||)`` is at most ``tol / 2``, where
    ``u = G + grad s(z) - grad s(y)`` lies in ``dF(z)``. One ``hvp`` call per iteration (plus one per
    backtracking trial); ``H y`` at the momentum point is combined from earlier products. As in
    :func:`conjugate_gradient`, the solve runs in units where ``||g||_inf = 1`` and ``2 lambda2 = 1``
    and the returned bound is the float64 certificate of the returned ``delta``.

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
    units = _Units.of(g, lam2)
    g, lam1, hvp = g / units.c, lam1 / units.c, units.operator(hvp)
    lam2, l_up, l_lo = lam2 / units.t, l_up / units.t, l_lo / units.t
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
            # (a zero step, e.g. D = 0 from D = 0 when lambda1 >= |g|, is not big: it needs no test)
            step_norm = _norm(diff)
            big = (step_norm > 0) & (step_norm >= sqrt_eps * _norm(cand))
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
        active = active & ~nc & (est > 0.5 * tol)
        # adaptive restart (gradient scheme), then Nesterov momentum
        restart = _dot(y - z, z - x) > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        c = (t - 1.0) / t_next
        y, hy = z + c * (z - x), hz + c * (hz - hx)
        x, hx, t = z, hz, t_next
    res = SolveResult(out, h_out, bound <= tol, bound, iters, nonconcave, rq_max, n_hvp)
    return units.result(_final_certificate(res, g, lam1, lam2, l_up, l_lo, tol))


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
    ``max(|grad s| - lambda1, 0)`` off it) and ``mu = 2 lambda2 - max(l_upper, delta.H delta / |delta|^2)``,
    in units where ``||g||_inf = 1`` and ``2 lambda2 = 1``, evaluated in float64 with an allowance for the
    round-off of ``h_delta`` (:func:`_bound64`): sound at any scale of ``g`` and ``H``. No extra Hessian
    products.

    Returns:
        ``(error_bound, nonconcave, rayleigh)``, each ``(n, m, 1)``.
    """
    lam1, lam2, l_up = _broadcast(g.expand_as(delta), lambda1, lambda2, l_upper)
    units = _Units.of(g.expand_as(delta), lam2)
    x, hx = delta * (units.t / units.c), h_delta / units.c
    rq = _rayleigh(x.double(), hx.double())
    l2, up = lam2 / units.t, l_up / units.t
    bound, concave = _bound64(x, hx, g / units.c, lam1 / units.c, l2, up, 0.0, rq)
    return bound.to(delta.dtype), ~concave, (rq * units.t.double()).to(delta.dtype)


def _min_norm_subgradient(delta: Tensor, h_delta: Tensor, g: Tensor, lam1: Tensor, lam2: Tensor) -> Tensor:
    grad = -g - h_delta + 2.0 * lam2 * delta
    return torch.where(delta != 0, grad + lam1 * torch.sign(delta), soft_threshold(grad, lam1))
