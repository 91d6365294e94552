"""The paper's solver (Singla et al., 2019, Sec. 4): fixed-iteration FISTA with backtracking.

Kept as the reference algorithm (``solver="paper"``): ``n_iter`` iterations from ``D = 0``, no
stopping rule, so its answer carries whatever error those iterations leave; the caller certifies it
(:func:`~captum_ext.attr.solvers.certified.certify`) and reports that error. It never raises on
round-off: a problem whose step search fails is frozen at its last iterate (``stalled``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .objective import HVP, _dot, smooth_part, soft_threshold


@dataclass
class FistaStep:
    """One backtracking trial of :func:`fista`, recorded when ``record=True`` (for tests and debugging)."""

    y: Tensor
    z: Tensor
    alpha: Tensor
    s_y: Tensor
    s_z: Tensor
    bound: Tensor
    accepted: Tensor


@dataclass
class FistaResult:
    """Output of :func:`fista`.

    Attributes:
        delta: minimiser estimate ``(n, m, d)``.
        h_delta: ``H @ delta`` (reused to evaluate the objective without another HVP).
        alpha: final per-problem step size ``(n, m, 1)`` after backtracking.
        n_hvp: number of calls to ``hvp`` (each a batched Hessian-vector product).
        stalled: ``(n, m, 1)``: problems whose step search found no step in some iteration (they kept
            their iterate); None only for results built elsewhere.
        history: backtracking trials (only with ``record=True``).
    """

    delta: Tensor
    h_delta: Tensor
    alpha: Tensor
    n_hvp: int
    history: list[FistaStep] = field(default_factory=list)
    stalled: Tensor | None = None


def fista(
    g: Tensor,
    hvp: HVP,
    lambda1: Tensor | float,
    lambda2: Tensor | float,
    *,
    n_iter: int = 10,
    lr: float = 0.1,
    decay: float = 0.5,
    max_backtracks: int = 50,
    monotone: bool = True,
    record: bool = False,
) -> FistaResult:
    """Batched proximal FISTA with backtracking for ``min s(D) + lambda1 ||D||_1``, started at ``D = 0``.

    Follows Beck & Teboulle (2009) as used by Singla et al. (2019, Sec. 4): a gradient step of size
    ``alpha`` on the smooth part, the soft-threshold prox, Nesterov momentum, and backtracking
    ``alpha <- decay * alpha`` until the sufficient-decrease test
    ``s(z) <= s(y) + grad s(y).(z - y) + ||z - y||^2 / (2 alpha)`` holds. Differences from the
    authors' code, both deliberate:

    * step sizes are kept **per problem** (the reference shares one across the batch, coupling examples);
    * with ``monotone=True`` (default) the monotone variant (MFISTA, Beck & Teboulle 2009b) keeps the
      better of the new prox point and the previous iterate, so the objective never gets worse than
      at ``D = 0``; the convergence rate is the same ``O(1/k^2)``.

    Because ``hvp`` is linear, ``H y`` at the momentum point is combined from the stored ``H x`` of
    earlier iterates, and each backtracking trial costs exactly one call to ``hvp``: the product
    ``H (z - y)`` of the step, so that the test reads ``lambda2 |z - y|^2 - (z - y).H(z - y) / 2 <=
    |z - y|^2 / (2 alpha)``, free of the cancellation between the large terms of ``s(z)`` and ``s(y)``
    (float32 with ``L >> c1``) and always met once ``alpha`` is small enough. It never raises: a
    problem whose step search still fails (``max_backtracks``) keeps its iterate and is flagged in
    ``stalled``; the caller certifies the result.

    Args:
        g: loss gradients, ``(n, 1, d)`` or ``(n, m, d)``.
        hvp: batched Hessian-vector product ``(n, m, d) -> (n, m, d)``; must be linear.
            Return zeros for the CAFO problem.
        lambda1: l1 weight(s), broadcastable to ``(n, m, 1)``; non-negative.
        lambda2: l2 weight(s), broadcastable to ``(n, m, 1)``.
        n_iter: number of FISTA iterations (paper: 10).
        lr: initial step size (paper: 0.1).
        decay: backtracking factor in (0, 1) (paper: 0.5).
        max_backtracks: safety cap on trials per iteration.
        monotone: use the monotone variant (see above).
        record: keep every backtracking trial in ``history``.

    Returns:
        :class:`FistaResult`.

    Examples:
        >>> g = torch.tensor([[[1.0, -0.2]]])
        >>> res = fista(g, lambda v: torch.zeros_like(v), 0.5, 1.0, n_iter=50)
        >>> res.delta  # CAFO optimum soft(g, 0.5) / (2 * 1.0)
        tensor([[[0.2500, 0.0000]]])
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must lie in (0, 1), got {decay}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if n_iter < 0:
        raise ValueError(f"n_iter must be non-negative, got {n_iter}")
    dtype, device = g.dtype, g.device
    lam1 = torch.as_tensor(lambda1, dtype=dtype, device=device)
    lam2 = torch.as_tensor(lambda2, dtype=dtype, device=device)
    shape = torch.broadcast_shapes(g.shape, lam1.shape, lam2.shape)
    n, m, d = shape
    g = g.expand(shape)
    lam1 = lam1.expand(n, m, 1)
    lam2 = lam2.expand(n, m, 1)

    x = torch.zeros(shape, dtype=dtype, device=device)
    hx = torch.zeros_like(x)
    y, hy = x, hx
    f_x = torch.zeros(n, m, 1, dtype=dtype, device=device)  # F(0) = 0
    alpha = torch.full((n, m, 1), float(lr), dtype=dtype, device=device)
    t = 1.0
    n_hvp = 0
    history: list[FistaStep] = []
    eps = torch.finfo(dtype).eps * 64  # round-off allowance of the step test, relative to its terms
    stalled = torch.zeros(n, m, 1, dtype=torch.bool, device=device)

    for _ in range(n_iter):
        s_y = smooth_part(y, hy, g, lam2)
        grad_y = -g - hy + 2.0 * lam2 * y
        pending = torch.ones(n, m, 1, dtype=torch.bool, device=device)
        z, hz, s_z_acc = x.clone(), hx.clone(), f_x - lam1 * x.abs().sum(-1, keepdim=True)
        for _trial in range(max_backtracks + 1):
            cand = soft_threshold(y - alpha * grad_y, alpha * lam1)
            diff = cand - y
            # the product of the step itself: the test below then compares quantities of size |diff|^2,
            # free of the cancellation between the large terms of s(cand) and s(y) (float32, L >> c1)
            h_diff = hvp(diff)
            n_hvp += 1
            sq = _dot(diff, diff)
            lin, quad = _dot(grad_y, diff), sq / (2.0 * alpha)
            curv = lam2 * sq - 0.5 * _dot(diff, h_diff)  # s(cand) - s(y) - lin, exactly
            ok = curv <= quad * (1.0 + eps)
            take = pending & ok
            z = torch.where(take, cand, z)
            hz = torch.where(take, hy + h_diff, hz)
            s_cand = s_y + lin + curv
            s_z_acc = torch.where(take, s_cand, s_z_acc)
            if record:
                history.append(FistaStep(y, cand, alpha.clone(), s_y, s_cand, s_y + lin + quad, take.clone()))
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            alpha = torch.where(pending, alpha * decay, alpha)
        # a problem still pending (round-off beyond the step test's reach) keeps its last iterate and
        # is reported as stalled; the caller's certificate states its error
        stalled = stalled | pending
        f_z = s_z_acc + lam1 * z.abs().sum(-1, keepdim=True)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        if monotone:
            better = f_z <= f_x
            x_new = torch.where(better, z, x)
            hx_new = torch.where(better, hz, hx)
            f_new = torch.where(better, f_z, f_x)
            c1, c2 = t / t_next, (t - 1.0) / t_next
            y = x_new + c1 * (z - x_new) + c2 * (x_new - x)
            hy = hx_new + c1 * (hz - hx_new) + c2 * (hx_new - hx)
        else:
            x_new, hx_new, f_new = z, hz, f_z
            c = (t - 1.0) / t_next
            y = x_new + c * (x_new - x)
            hy = hx_new + c * (hx_new - hx)
        x, hx, f_x, t = x_new, hx_new, f_new, t_next

    return FistaResult(delta=x, h_delta=hx, alpha=alpha, n_hvp=n_hvp, history=history, stalled=stalled)
