"""Exact sparse CASO on a low-rank Hessian: semismooth Newton on an ``r``-dimensional dual, certified.

Pure tensor maths, no models. Per problem, with ``H = B B^T`` (``B`` of shape ``d x r``) and
``2 lambda2 > L = lambda_max(B^T B)``, the minimisation form of CASO (as in :mod:`.optim`)::

    min_D  F(D) = -g.D - 1/2 D.B B^T D + lambda2 ||D||^2 + lambda1 ||D||_1

is ``mu = 2 lambda2 - L`` strongly convex. Writing ``-1/2 ||B^T D||^2 = min_u 1/2 ||u||^2 - u.B^T D``
and minimising over ``D`` first (a separable prox) gives ``min F = min_u phi(u)`` with::

    phi(u) = 1/2 ||u||^2 - ||soft(g + B u, lambda1)||^2 / (4 lambda2)
    D(u)   = soft(g + B u, lambda1) / (2 lambda2)

``phi`` is piecewise quadratic, ``1``-smooth and ``mu / (2 lambda2)`` strongly convex; its gradient is
``u - B^T D(u)`` and an element of its generalised Hessian is ``I - B^T diag(a) B / (2 lambda2)`` with
``a = 1[|g + B u| > lambda1]`` (ties ``|g + B u| = lambda1`` take ``0``, an element of the Clarke
Jacobian of the soft threshold). Semismooth Newton with an Armijo line search on ``phi`` needs one
``r x r`` solve and a few ``d x r`` products per step, and stops exactly once the active set is right.

Certificate: ``B grad phi(u)`` lies in ``dF(D(u))``, and the returned bound uses the minimum-norm element
of ``dF(D)`` of the returned ``D``, evaluated in float64 with a round-off allowance: by strong convexity
``||D - D*|| <= ||s|| / mu`` for every ``s`` in ``dF(D)``. Derivation: ``docs/sparse_dual.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .solvers import default_tol, soft_threshold

__all__ = ["SparseDualResult", "sparse_dual_solve"]


@dataclass
class SparseDualResult:
    """Output of :func:`sparse_dual_solve`; leading shape ``(n,)`` or ``(n, m)`` as ``g`` without ``d``.

    Attributes:
        delta: the minimiser estimate ``D``, shaped like ``g``.
        h_delta: ``B B^T D``, shaped like ``g``.
        u: the dual variable ``(..., r)``; ``u = B^T D`` at the optimum (a warm start for nearby problems).
        iterations: Newton steps taken per problem (``0`` when ``r = 0`` or ``u0`` was already optimal).
        converged: ``rel_error_bound <= tol``.
        residual: norm of the minimum-norm subgradient of the minimised objective at ``delta`` (float64).
        error_bound: certified bound on ``||delta - D*||``: ``(residual + round-off) / mu`` (float64).
        rel_error_bound: ``error_bound / ||delta||`` (``0`` when both are zero).
        mu: strong convexity modulus ``2 lambda2 - L`` used, with ``L`` rounded up (float64).
    """

    delta: Tensor
    h_delta: Tensor
    u: Tensor
    iterations: Tensor
    converged: Tensor
    residual: Tensor
    error_bound: Tensor
    rel_error_bound: Tensor
    mu: Tensor


def _per_problem(value: Tensor | float, name: str, n: int, m: int, like: Tensor) -> Tensor:
    """A number, ``(n,)`` (per example) or ``(n, m)`` (per problem) as ``(n, m, 1)`` of ``like``'s kind."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.reshape(1, 1, 1).expand(n, m, 1)
    if t.shape == (n,):
        return t.reshape(n, 1, 1).expand(n, m, 1)
    if t.shape == (n, m):
        return t.reshape(n, m, 1)
    raise ValueError(
        f"{name} must be a number, shape ({n},) per example or ({n}, {m}) per problem; got {tuple(t.shape)}"
    )


def _check_inputs(B: Tensor, g: Tensor) -> None:
    if B.dim() != 3:
        raise ValueError(f"B must have shape (n, d, r), got {tuple(B.shape)}")
    if g.dim() not in (2, 3) or g.shape[0] != B.shape[0] or g.shape[-1] != B.shape[1]:
        raise ValueError(
            f"g must have shape (n, d) or (n, m, d) matching B {tuple(B.shape)}, got {tuple(g.shape)}"
        )
    if not (B.is_floating_point() and g.dtype == B.dtype and g.device == B.device):
        raise ValueError(
            "B and g must share one floating dtype and device, "
            f"got {B.dtype}/{g.dtype} on {B.device}/{g.device}"
        )
    if B.shape[1] == 0:
        raise ValueError("B and g have no features (d = 0); pass at least one input feature per example")
    if not (bool(torch.isfinite(B).all()) and bool(torch.isfinite(g).all())):
        raise ValueError("B and g must be finite (found NaN or inf); check the model's gradients")


#: elements of a temporary block of ``B`` (a float64 copy of a float32 factor, or the active rows of a
#: Gram matrix): large factors are never copied whole
_CHUNK = 1 << 22
#: float64 refinement steps after a float32 solve (each a Newton step whose products run in float64)
_REFINE_STEPS = 3


def _blocks(B: Tensor, dtype: torch.dtype, temp_per_row: int = 0) -> Iterator[tuple[slice, Tensor]]:
    """Row blocks of ``B`` (along ``d``) in ``dtype``, sized so that a block's copy (when ``B`` has another
    dtype) plus the caller's temporaries (``temp_per_row`` elements per row) stay within ``_CHUNK``
    elements; ``B`` itself, uncopied, when it has ``dtype`` and no temporaries are announced."""
    n, d, r = B.shape
    per_row = temp_per_row + (n * r if B.dtype != dtype else 0)
    rows = d if per_row == 0 else max(1, _CHUNK // per_row)
    for a in range(0, d, rows):
        yield slice(a, min(a + rows, d)), B[:, a : a + rows].to(dtype)


def _top_eigenvalue_upper(B: Tensor) -> tuple[Tensor, Tensor]:
    """``(L rounded up, ||B||_F^2)`` per example in float64, from the ``r x r`` Gram matrix."""
    n, d, r = B.shape
    if r == 0:
        zero = torch.zeros(n, dtype=torch.float64, device=B.device)
        return zero, zero
    gram = sum(b.transpose(1, 2) @ b for _, b in _blocks(B, torch.float64))
    top = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0)
    frob = gram.diagonal(dim1=1, dim2=2).sum(1)
    eps = torch.finfo(torch.float64).eps
    # the Gram's entries carry at most (d + 2) eps |b_i|.|b_j| of round-off, and eigvalsh is backward stable
    return top + (d + r + 4) * eps * frob, frob


def _mv(B: Tensor, v: Tensor) -> Tensor:
    """``B v`` ``(n, m, d)`` for ``v`` ``(n, m, r)``, in ``v``'s dtype (float64 by row blocks of ``B``)."""
    if v.dtype == B.dtype:
        return torch.einsum("ndr,nmr->nmd", B, v)
    return torch.cat([torch.einsum("ndr,nmr->nmd", b, v) for _, b in _blocks(B, v.dtype)], -1)


def _rmv(B: Tensor, x: Tensor) -> Tensor:
    """``B^T x`` ``(n, m, r)`` for ``x`` ``(n, m, d)``, in ``x``'s dtype."""
    if x.dtype == B.dtype:
        return torch.einsum("ndr,nmd->nmr", B, x)
    return sum(torch.einsum("ndr,nmd->nmr", b, x[..., rows]) for rows, b in _blocks(B, x.dtype))


@dataclass
class _Scaled:
    """The problem in units where ``||g||_inf = 1`` and ``2 lambda2 = 1`` (per problem), so that no power of
    a tiny gradient or curvature (confident predictions: ``|g| ~ 1e-30``) underflows in float32.

    With ``c = ||g||_inf`` and ``sigma = 1 / sqrt(2 lambda2)``: ``D = c sigma^2 D'`` where ``D'`` solves the
    problem with ``g' = g / c``, ``lambda1' = lambda1 / c``, ``B' = sigma B`` and ``2 lambda2' = 1``; its dual
    variable is ``w = u / (c sigma)``. ``B'`` is never formed: ``sigma`` scales the ``r``-vectors. All
    products run in the dtype of ``g`` (float64 refinement of a float32 factor: by row blocks).
    """

    B: Tensor
    g: Tensor
    lam1: Tensor
    sigma: Tensor

    def to64(self) -> _Scaled:
        f64 = torch.float64
        return _Scaled(self.B, self.g.to(f64), self.lam1.to(f64), self.sigma.to(f64))

    def parts(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``z = g' + B' w``, ``s = soft(z, lambda1') = D'(w)``, ``B'^T s`` and ``||s||^2`` ``(n, m, 1)``;
        ``phi(w) = (||w||^2 - ||s||^2) / 2``."""
        z = self.g + _mv(self.B, self.sigma * w)
        s = soft_threshold(z, self.lam1)
        bts = self.sigma * _rmv(self.B, s)
        return z, s, bts, (s * s).sum(-1, keepdim=True)

    def hessian_factor(self, active: Tensor, chol: Tensor | None, need: Tensor) -> Tensor:
        """Cholesky factors of the generalised Hessians ``I - X^T X``, ``X = diag(a) B'``, in float64
        ``(n, m, r, r)``: recomputed for the problems marked in ``need`` ``(n, m)`` only (``O(d r^2)`` each),
        the others kept from ``chol``. A failed factorisation (round-off only: the Hessian is ``>= mu I``)
        leaves the identity there, i.e. a gradient step."""
        n, m, d = active.shape
        r = self.B.shape[2]
        eye = torch.eye(r, dtype=torch.float64, device=active.device)
        if chol is None:
            chol = eye.expand(n, m, r, r).clone()
        sel = torch.nonzero(need.reshape(-1))[:, 0]
        ex = torch.div(sel, m, rounding_mode="floor")
        weight = active.reshape(n * m, d)[sel].to(self.g.dtype) * self.sigma.reshape(n * m, 1)[sel]
        gram = 0
        # row blocks sized for the temporaries b[ex] and x, each (k, rows, r)
        for rows, b in _blocks(self.B, self.g.dtype, temp_per_row=2 * sel.numel() * r):
            x = weight[:, rows, None] * b[ex]
            gram = gram + x.transpose(1, 2) @ x
        new, info = torch.linalg.cholesky_ex(eye - gram.to(torch.float64))
        new = torch.where((info != 0)[:, None, None], eye, new)
        flat = chol.reshape(n * m, r, r).clone()
        flat[sel] = new
        return flat.reshape(n, m, r, r)


def _active(z: Tensor, lam1: Tensor) -> Tensor:
    """Generalised derivative of the soft threshold: ``1`` strictly outside ``[-lambda1, lambda1]``;
    ``0`` at ties (inside the Clarke interval ``[0, 1]``); everywhere ``1`` when ``lambda1 = 0``."""
    return (z.abs() > lam1) | (lam1 == 0)


def _finish(
    B: Tensor, g: Tensor, u: Tensor, lam1: Tensor, two_l2: Tensor, mu: Tensor, frob: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``D(u)`` evaluated in float64 and rounded once to the working dtype, ``H D``, and the certificate
    ``(residual, error_bound)`` of that rounded ``D`` in float64 (each ``(n, m, 1)``)."""
    f64 = torch.float64
    g64, l1, tl2 = g.to(f64), lam1.to(f64), two_l2.to(f64)
    z = g64 + _mv(B, u.to(f64))
    delta = (soft_threshold(z, l1) / tl2).to(g.dtype)
    x = delta.to(f64)
    hx = _mv(B, _rmv(B, x))
    grad = -g64 - hx + tl2 * x
    sub = torch.where(x != 0, grad + l1 * torch.sign(x), soft_threshold(grad, l1))
    residual = sub.norm(dim=-1, keepdim=True)
    # round-off of this float64 evaluation (zero when delta = 0: then every term is exact)
    d, r = B.shape[1], B.shape[2]
    eps = torch.finfo(f64).eps
    xn = x.norm(dim=-1, keepdim=True)
    nonzero = (xn > 0).to(f64)
    scale = nonzero * (g64.norm(dim=-1, keepdim=True) + l1 * math.sqrt(d)) + (tl2 + frob[:, None, None]) * xn
    allowance = (d + r + 4) * eps * scale
    return delta, hx.to(g.dtype), residual, (residual + allowance) / mu


def sparse_dual_solve(
    B: Tensor,
    g: Tensor,
    lambda1: Tensor | float,
    lambda2: Tensor | float,
    *,
    tol: float | None = None,
    max_iter: int = 50,
    u0: Tensor | None = None,
) -> SparseDualResult:
    """Exact CASO solve for ``H = B B^T`` and ``lambda1 >= 0`` by semismooth Newton on the ``r``-dim dual.

    Minimises ``-g.D - 1/2 D.B B^T D + lambda2 ||D||^2 + lambda1 ||D||_1`` per problem (the maximised
    CASO objective negated). Each problem runs Newton steps
    ``u <- u - t (I - B^T diag(a) B / (2 lambda2))^{-1} grad phi(u)`` with ``t`` halved until Armijo's
    test on ``phi`` holds, and stops (frozen, so results do not depend on the batch) once its certified
    relative error is at most ``tol`` or its active set ``a`` repeats after a full step (then ``u``
    solves the quadratic piece exactly). The certificate is re-evaluated in float64 at the end; a
    problem whose bound stays above ``tol`` after ``max_iter`` steps (or whose precision is exhausted,
    e.g. float32 at tiny ``2 lambda2 - L``) is returned with ``converged=False`` and its bound: the
    caller must warn.

    With ``lambda1 = 0`` one Newton step from ``u = 0`` is the Woodbury solve
    ``(2 lambda2 I - B B^T)^{-1} g``. With ``r = 0`` the answer ``soft(g, lambda1) / (2 lambda2)`` needs
    no step. Zero columns of ``B`` (padding to a common rank) change nothing.

    Args:
        B: factors ``(n, d, r)`` with ``H = B B^T`` per example.
        g: loss gradients ``(n, d)``, or ``(n, m, d)`` for ``m`` problems per example sharing ``B``.
        lambda1: ``>= 0``; a number, ``(n,)`` per example, or ``g.shape[:-1]`` per problem.
        lambda2: ``> L / 2`` with ``L = lambda_max(B^T B)``; same shapes as ``lambda1``.
        tol: target for ``||D - D*|| / ||D||`` (default: ``1e-8`` in float64, ``1e-4`` otherwise).
        max_iter: Newton steps per problem.
        u0: optional warm start ``(..., r)`` (e.g. ``u`` of a nearby ``lambda1``); default zero.

    Returns:
        :class:`SparseDualResult`.

    Raises:
        ValueError: on bad shapes, non-finite data, ``lambda1 < 0``, or ``2 lambda2 <= L`` (the problem
            has no maximiser; choose ``lambda2 > L / 2``).

    Examples:
        >>> B = torch.tensor([[[1.0], [1.0]]], dtype=torch.float64)  # H = [[1, 1], [1, 1]], L = 2
        >>> g = torch.tensor([[1.0, 0.25]], dtype=torch.float64)
        >>> res = sparse_dual_solve(B, g, 0.5, 2.0)
        >>> res.delta  # (2 lambda2 I - H) D = g - lambda1 sign(D) on the support {0}
        tensor([[0.1667, 0.0000]], dtype=torch.float64)
        >>> bool(res.converged), int(res.iterations)
        (True, 1)
    """
    _check_inputs(B, g)
    squeeze = g.dim() == 2
    g3 = g[:, None, :] if squeeze else g
    n, m, d = g3.shape
    r = B.shape[2]
    lam1 = _per_problem(lambda1, "lambda1", n, m, g3)
    lam2 = _per_problem(lambda2, "lambda2", n, m, g3)
    if not bool(torch.isfinite(lam1).all()) or bool((lam1 < 0).any()):
        raise ValueError("lambda1 must be finite and >= 0")
    if not bool(torch.isfinite(lam2).all()) or bool((lam2 <= 0).any()):
        raise ValueError("lambda2 must be finite and > 0")
    if tol is None:
        tol = default_tol(g.dtype)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be non-negative, got {max_iter}")
    l_up, frob = _top_eigenvalue_upper(B)
    two_l2 = 2.0 * lam2
    mu = two_l2.to(torch.float64) - l_up[:, None, None]
    if bool((mu <= 0).any()):
        bad = torch.nonzero((mu <= 0).reshape(n, m).any(1))[0, 0].item()
        raise ValueError(
            f"2 * lambda2 must exceed L = lambda_max(B B^T) for a strongly concave CASO problem; example "
            f"{bad}: 2 * lambda2 = {float(two_l2[bad].min()):.6g}, L = {float(l_up[bad]):.6g}. "
            "Choose lambda2 > L / 2 (CASO's default lambda2 = L / 2 + c1)."
        )
    if bool((g3.abs().amax(-1, keepdim=True) <= lam1).all()):
        # |g_i| <= lambda1 everywhere: D = 0 meets the KKT conditions exactly (0 is in -g + lambda1 d|0|),
        # so it is the optimum with a zero certificate, whatever u0 and B
        zeros = torch.zeros_like(g3)
        none = torch.zeros(n, m, 1, dtype=torch.float64, device=g.device)
        iters = torch.zeros(n, m, dtype=torch.long, device=g.device)
        return _pack(zeros, zeros, g3.new_zeros(n, m, r), iters, none, none, tol, mu, squeeze)
    if u0 is None:
        u = g3.new_zeros(n, m, r)
    else:
        u = (u0[:, None, :] if squeeze else u0).to(g3).clone()
        if u.shape != (n, m, r):
            raise ValueError(f"u0 must have shape {(n, r) if squeeze else (n, m, r)}, got {tuple(u0.shape)}")
    c = g3.abs().amax(-1, keepdim=True)
    c = torch.where(c > 0, c, torch.ones_like(c))
    sigma = torch.rsqrt(2.0 * lam2)
    prob = _Scaled(B, g3 / c, lam1 / c, sigma)
    w = u / (c * sigma)
    iters = torch.zeros(n, m, dtype=torch.long, device=g.device)
    mu_scaled = mu * sigma.to(torch.float64) ** 2  # 1 - L / (2 lambda2)
    if r > 0:
        w, iters, hess = _newton(prob, w, mu_scaled.to(g.dtype), tol, max_iter)
        if g.dtype != torch.float64 and max_iter > 0:
            # float32 sums over d limit w to ~ sqrt(d) eps32 / mu: refine with float64 products (1-2 steps)
            w, more, _ = _newton(prob.to64(), w.to(torch.float64), mu_scaled, tol, _REFINE_STEPS, hess)
            iters = iters + more
    u = (c * sigma).to(w.dtype) * w
    delta, h_delta, residual, bound = _finish(B, g3, u, lam1, two_l2, mu, frob)
    return _pack(delta, h_delta, u.to(g.dtype), iters, residual, bound, tol, mu, squeeze)


def _pack(
    delta: Tensor, h_delta: Tensor, u: Tensor, iters: Tensor, residual: Tensor, bound: Tensor, tol: float,
    mu: Tensor, squeeze: bool,
) -> SparseDualResult:  # fmt: skip
    """The result from ``(n, m, ...)`` pieces (``residual``, ``bound``, ``mu``: ``(n, m, 1)``)."""
    dn = delta.to(torch.float64).norm(dim=-1, keepdim=True)
    rel = torch.where(bound == 0, torch.zeros_like(bound), bound / dn)  # x / 0 = inf for a non-zero bound
    out = (delta, h_delta, u, iters, rel[..., 0] <= tol, residual[..., 0], bound[..., 0], rel[..., 0])
    if squeeze:
        out = tuple(t[:, 0] for t in out)
    return SparseDualResult(*out, mu=mu[..., 0, 0] if squeeze else mu[..., 0])


def _newton(
    prob: _Scaled, w: Tensor, mu: Tensor, tol: float, max_iter: int, hess: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Batched semismooth Newton with Armijo backtracking on the scaled dual.

    ``mu = 1 - L / (2 lambda2)`` is the scaled problem's strong convexity modulus, ``(n, m, 1)``. Stopping
    uses ``B' grad phi(w)``, an element of the primal subdifferential at ``D'(w)``, so ``||D' - D'*|| <=
    sqrt(1 - mu) ||grad phi|| / mu`` (an ``r``-dimensional test). A problem stops when that bound is below
    ``tol / 2`` relative to ``||D'||``, when a full step that kept the active set (an exact solve of the
    quadratic piece, up to round-off) did not halve it (precision exhausted), or when the line search
    finds no decrease. The Cholesky factor of the generalised Hessian is reused while the active set
    does not change (``hess``: a factor and the active set it belongs to, passed between precisions).

    Returns:
        ``(w, iterations, hess)``.
    """
    n, m, _ = prob.g.shape
    dtype = prob.g.dtype
    eps = torch.finfo(dtype).eps
    coef = torch.sqrt(1.0 - mu) / mu
    z, s, bts, ssq = prob.parts(w)
    wsq = (w * w).sum(-1, keepdim=True)
    active = _active(z, prob.lam1)
    chol, kept = None, torch.zeros_like(ssq, dtype=torch.bool)
    if hess is not None:
        chol, kept = hess[0], (hess[1] == active).all(-1, keepdim=True)
    running = torch.ones_like(kept)
    iters = torch.zeros(n, m, dtype=torch.long, device=w.device)
    prev = torch.full_like(ssq, math.inf)
    for _ in range(max_iter):
        grad = w - bts
        bound = coef * grad.norm(dim=-1, keepdim=True)
        small = bound <= 0.5 * tol * ssq.sqrt()
        running = running & ~small & ~(kept & (bound > 0.5 * prev))
        if not bool(running.any()):
            break
        prev = bound
        need = running & ~kept if chol is not None else running
        if bool(need.any()):
            chol = prob.hessian_factor(active, chol, need[..., 0])
        step = -torch.cholesky_solve(grad.to(torch.float64)[..., None], chol)[..., 0].to(dtype)
        step = torch.where(running, step, torch.zeros_like(step))
        slope = (grad * step).sum(-1, keepdim=True)
        phi = 0.5 * (wsq - ssq)
        t = torch.ones_like(ssq)
        pending, full = running, running
        old = (w, z, s, bts, ssq, wsq)
        new = old
        for trial in range(60):
            cand_w = w + t * step
            cand = (cand_w, *prob.parts(cand_w), (cand_w * cand_w).sum(-1, keepdim=True))
            phi_c = 0.5 * (cand[5] - cand[4])
            # Armijo with an allowance for the round-off of phi's two terms (they cancel near the optimum)
            ok = phi_c <= phi + 1e-4 * t * slope + 8 * eps * (cand[5] + cand[4] + wsq + ssq)
            if trial == 0 and bool((ok | ~running).all()):
                # full steps everywhere; stopped problems have step 0, so their values are recomputed as is
                new, pending = cand, pending & ~ok
                break
            take = pending & ok
            new = tuple(torch.where(take, c, o) for c, o in zip(cand, new, strict=True))
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            full = full & ~pending
            t = torch.where(pending, 0.5 * t, t)
        # pending: no decrease found (precision exhausted); such a problem keeps w and stops
        iters = iters + (running & ~pending)[..., 0].long()
        w, z, s, bts, ssq, wsq = new
        new_active = _active(z, prob.lam1)
        kept = full & (new_active == active).all(-1, keepdim=True)
        active = new_active
        running = running & ~pending
    return w, iters, None if chol is None else (chol, active)
