"""The paper's unsupervised choice of ``lambda1`` by sparsity ratio (Singla et al., 2019, Sec. 4.1).

Pure tensor bookkeeping around any batched solver ``solve(lambda1 (n, m)) -> (delta, objective)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


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
