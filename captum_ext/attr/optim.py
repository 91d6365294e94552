"""Pure tensor optimisation for CASO / CAFO: soft-threshold prox, batched monotone FISTA, lambda1 search.

Nothing here knows about models. Every routine works on a batch of independent problems laid out as
``(n, m, d)``: ``n`` examples, ``m`` problems per example (e.g. several ``lambda1`` values sharing one
Hessian), ``d`` features. Per-problem scalars (``lambda1``, ``lambda2``, step sizes) are ``(n, m, 1)``
tensors, or anything that broadcasts to it.

The problem solved is the minimisation form of the CASO objective (Singla et al., 2019, Sec. 4)::

    min_D  F(D) = s(D) + lambda1 * ||D||_1,      s(D) = -g.D - 1/2 D.H D + lambda2 * ||D||^2

which is the negated ``g.D + 1/2 D.H D - lambda1 ||D||_1 - lambda2 ||D||^2`` that CASO maximises. ``H``
enters only through a Hessian-vector product ``hvp(D) -> H D``, which must be linear in ``D``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

HVP = Callable[[Tensor], Tensor]


def soft_threshold(x: Tensor, threshold: Tensor | float) -> Tensor:
    """Proximal operator of ``threshold * ||.||_1``: ``sign(x) * max(|x| - threshold, 0)``.

    It is the exact minimiser of ``1/2 ||z - x||^2 + threshold * ||z||_1`` over ``z``.

    Examples:
        >>> soft_threshold(torch.tensor([-3.0, 0.5, 2.0]), 1.0)
        tensor([-2.,  0.,  1.])
    """
    # "+ 0.0" turns the -0.0 of negative entries inside the threshold into +0.0 (prints as 0.0000)
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0) + 0.0


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def smooth_part(delta: Tensor, h_delta: Tensor, g: Tensor, lambda2: Tensor) -> Tensor:
    """``s(D) = -g.D - 1/2 D.HD + lambda2 ||D||^2`` given ``HD``; shape ``(..., 1)``."""
    return -_dot(g, delta) - 0.5 * _dot(delta, h_delta) + lambda2 * _dot(delta, delta)


def caso_objective(
    delta: Tensor, h_delta: Tensor | None, g: Tensor, lambda1: Tensor | float, lambda2: Tensor | float
) -> Tensor:
    """The maximised objective ``g.D + 1/2 D.HD - lambda1 ||D||_1 - lambda2 ||D||^2``, shape ``(...)``.

    ``h_delta=None`` drops the Hessian term (the CAFO objective).
    """
    lambda1 = torch.as_tensor(lambda1, dtype=delta.dtype, device=delta.device)
    lambda2 = torch.as_tensor(lambda2, dtype=delta.dtype, device=delta.device)
    quad = 0.0 if h_delta is None else 0.5 * _dot(delta, h_delta)
    val = _dot(g, delta) + quad - lambda1 * delta.abs().sum(-1, keepdim=True) - lambda2 * _dot(delta, delta)
    return val.squeeze(-1)


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
        history: backtracking trials (only with ``record=True``).
    """

    delta: Tensor
    h_delta: Tensor
    alpha: Tensor
    n_hvp: int
    history: list[FistaStep] = field(default_factory=list)


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
    earlier iterates, so each backtracking trial costs exactly one call to ``hvp``.

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
    # tolerance for round-off in the sufficient-decrease test, relative to the terms' magnitude
    eps = torch.finfo(dtype).eps * 64

    for _ in range(n_iter):
        s_y = smooth_part(y, hy, g, lam2)
        grad_y = -g - hy + 2.0 * lam2 * y
        pending = torch.ones(n, m, 1, dtype=torch.bool, device=device)
        z = torch.empty_like(x)
        hz = torch.empty_like(x)
        s_z_acc = torch.empty_like(s_y)
        for _trial in range(max_backtracks + 1):
            cand = soft_threshold(y - alpha * grad_y, alpha * lam1)
            h_cand = hvp(cand)
            n_hvp += 1
            s_cand = smooth_part(cand, h_cand, g, lam2)
            diff = cand - y
            lin, quad = _dot(grad_y, diff), _dot(diff, diff) / (2.0 * alpha)
            bound = s_y + lin + quad
            ok = s_cand <= bound + eps * (s_y.abs() + lin.abs() + quad)
            take = pending & ok
            if _trial == 0 and bool(take.all()):  # common case: no backtracking needed
                z, hz, s_z_acc = cand, h_cand, s_cand
            else:
                z = torch.where(take, cand, z)
                hz = torch.where(take, h_cand, hz)
                s_z_acc = torch.where(take, s_cand, s_z_acc)
            if record:
                history.append(FistaStep(y, cand, alpha.clone(), s_y, s_cand, bound, take.clone()))
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            alpha = torch.where(pending, alpha * decay, alpha)
        else:  # pragma: no cover - only with an invalid (non-linear or exploding) hvp
            raise RuntimeError(
                "FISTA backtracking did not find an acceptable step; is the Hessian-vector product "
                "linear and lambda2 large enough for a concave objective?"
            )
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

    return FistaResult(delta=x, h_delta=hx, alpha=alpha, n_hvp=n_hvp, history=history)


def sparsity_ratio(delta: Tensor) -> Tensor:
    """Fraction of exactly-zero features along the last dimension (the paper's eta)."""
    return (delta == 0).to(delta.dtype).mean(-1)


def initial_lambda1_grid(g_inf: Tensor, start: float = 1e-5, factor: float = 10.0) -> Tensor:
    """The paper's first sweep: ``start * factor**k`` up to the first value that zeroes ``D``.

    ``D = 0`` is optimal exactly when ``lambda1 >= ||g||_inf`` (zero is in the subdifferential), so
    the number of values is known up front. Examples needing fewer values are padded with larger
    ones (whose solution is zero), so the grid is ``(n, m)`` with a common ``m``.
    """
    g_inf = g_inf.clamp_min(torch.finfo(g_inf.dtype).tiny)
    k_needed = torch.ceil(torch.log(g_inf / start) / math.log(factor)).clamp_min(0)
    m = int(k_needed.max().item()) + 1
    powers = torch.arange(m, dtype=g_inf.dtype, device=g_inf.device)
    return (start * factor**powers).expand(g_inf.shape[0], m).clone()


@dataclass
class SparsitySearch:
    """Outcome of :func:`sparsity_search` per example.

    Attributes:
        lambda1: chosen ``lambda1`` ``(n,)``.
        index: ``(round, column)`` of the chosen candidate, for bookkeeping.
        in_window: whether the chosen candidate's sparsity lies in the window ``(n,)``.
        delta: chosen solutions ``(n, d)``.
        objective: their (maximised) objective values ``(n,)``.
        sparsity: their sparsity ratios ``(n,)``.
        n_candidates: how many ``lambda1`` values were solved per example.
    """

    lambda1: Tensor
    in_window: Tensor
    delta: Tensor
    objective: Tensor
    sparsity: Tensor
    n_candidates: int


def _refine(hi: Tensor, lo: Tensor, fallback: Tensor, count: int) -> Tensor:
    """Next ``lambda1`` candidates strictly between ``lo`` (too dense) and ``hi`` (too sparse).

    The paper halves the first too-sparse value; halving is used while ``hi / 2**count`` stays above
    ``lo``, otherwise the candidates are spaced geometrically inside ``(lo, hi)`` so that repeated
    rounds narrow the bracket instead of re-solving the same values.
    """
    hi = torch.where(torch.isfinite(hi), hi, fallback)
    j = torch.arange(1, count + 1, dtype=hi.dtype, device=hi.device)
    halving = hi[:, None] * 2.0 ** -j[None, :]
    safe_lo = lo.clamp_min(torch.finfo(hi.dtype).tiny)
    frac = (j / (count + 1))[None, :]
    geometric = hi[:, None] * (safe_lo / hi)[:, None] ** frac
    use_halving = (halving[:, -1] > lo)[:, None]
    return torch.where(use_halving, halving, geometric)


Solver = Callable[[Tensor], tuple[Tensor, Tensor]]


def sparsity_search(
    solve: Solver,
    g_inf: Tensor,
    window: tuple[float, float] = (0.75, 1.0),
    *,
    start: float = 1e-5,
    factor: float = 10.0,
    halvings: int = 3,
    max_rounds: int = 4,
) -> SparsitySearch:
    """Unsupervised ``lambda1`` choice by sparsity ratio (Singla et al., 2019, Sec. 4.1).

    Round 0 solves ``lambda1 = start * factor**k`` for ``k = 0, 1, ...`` until the solution is zero.
    Among candidates whose sparsity ``eta`` lies in ``window = [low, high)``, the one with the
    largest objective wins. An example with no candidate in the window takes further rounds: the
    smallest ``lambda1`` known to be too sparse (``eta >= high``) is halved ``halvings`` times and
    those values are solved together, for at most ``max_rounds`` rounds. If the window is never hit,
    the candidate whose ``eta`` is closest to it is returned and ``in_window`` is ``False``.

    Args:
        solve: ``lambda1 (n, m) -> (delta (n, m, d), objective (n, m))``; solves all candidates
            as one batch.
        g_inf: ``||g||_inf`` per example ``(n,)``, which fixes the length of the first sweep.
        window: ``(low, high)`` bounds on ``eta``; ``0 <= low < high <= 1``.
        start, factor: the first sweep's start and ratio (paper: 1e-5 and 10).
        halvings: values per refinement round (paper: halving).
        max_rounds: refinement rounds after the first sweep.

    Returns:
        :class:`SparsitySearch`.
    """
    low, high = window
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"sparsity window must satisfy 0 <= low < high <= 1, got {window}")
    n = g_inf.shape[0]
    device, dtype = g_inf.device, g_inf.dtype
    grid = initial_lambda1_grid(g_inf, start, factor)

    best_obj = torch.full((n,), -math.inf, dtype=dtype, device=device)
    best_lam = torch.zeros(n, dtype=dtype, device=device)
    best_delta: Tensor | None = None
    best_eta = torch.zeros(n, dtype=dtype, device=device)
    found = torch.zeros(n, dtype=torch.bool, device=device)
    # fallback: candidate whose sparsity is closest to the window
    fb_dist = torch.full((n,), math.inf, dtype=dtype, device=device)
    fb_lam = torch.zeros_like(best_lam)
    fb_delta: Tensor | None = None
    fb_eta = torch.zeros_like(best_eta)
    fb_obj = torch.zeros_like(best_obj)
    too_sparse = torch.full((n,), math.inf, dtype=dtype, device=device)
    too_dense = torch.zeros(n, dtype=dtype, device=device)
    n_candidates = 0

    def pick(cur: Tensor | None, new: Tensor, mask: Tensor) -> Tensor:
        if cur is None:
            return new.clone()
        shaped = mask.view(-1, *([1] * (new.dim() - 1)))
        return torch.where(shaped, new, cur)

    lambdas = grid
    for rnd in range(max_rounds + 1):
        delta, obj = solve(lambdas)
        n_candidates += lambdas.shape[1]
        eta = sparsity_ratio(delta)
        rows = torch.arange(n, device=device)
        in_win = (eta >= low) & (eta < high)
        active = ~found
        # best in-window candidate of this round
        masked = torch.where(in_win, obj, torch.full_like(obj, -math.inf))
        j = masked.argmax(1)
        cand_obj = masked[rows, j]
        upd = active & (cand_obj > -math.inf)
        better = upd & (cand_obj > best_obj)
        best_obj = torch.where(better, cand_obj, best_obj)
        best_lam = torch.where(better, lambdas[rows, j], best_lam)
        best_eta = torch.where(better, eta[rows, j], best_eta)
        best_delta = pick(best_delta, delta[rows, j], better)
        # fallback bookkeeping
        dist = torch.clamp(low - eta, min=0) + torch.clamp(eta - high, min=0) + (eta >= high) * 1e-9
        jf = dist.argmin(1)
        df = dist[rows, jf]
        fb_better = active & (df < fb_dist)
        fb_dist = torch.where(fb_better, df, fb_dist)
        fb_lam = torch.where(fb_better, lambdas[rows, jf], fb_lam)
        fb_eta = torch.where(fb_better, eta[rows, jf], fb_eta)
        fb_obj = torch.where(fb_better, obj[rows, jf], fb_obj)
        fb_delta = pick(fb_delta, delta[rows, jf], fb_better)
        found = found | upd
        sparse_lams = torch.where(eta >= high, lambdas, torch.full_like(lambdas, math.inf))
        too_sparse = torch.minimum(too_sparse, sparse_lams.min(1).values)
        dense_lams = torch.where(eta < low, lambdas, torch.zeros_like(lambdas))
        too_dense = torch.maximum(too_dense, dense_lams.max(1).values)
        if bool(found.all()) or rnd == max_rounds:
            break
        lambdas = _refine(too_sparse, too_dense, lambdas.max(1).values, halvings)

    assert best_delta is not None and fb_delta is not None
    lam = torch.where(found, best_lam, fb_lam)
    return SparsitySearch(
        lambda1=lam,
        in_window=found,
        delta=pick(fb_delta, best_delta, found),
        objective=torch.where(found, best_obj, fb_obj),
        sparsity=torch.where(found, best_eta, fb_eta),
        n_candidates=n_candidates,
    )
