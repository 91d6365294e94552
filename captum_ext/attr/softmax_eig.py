"""Eigenpairs of the softmax covariance ``A = diag(p) - p p^T`` that the closed-form factor keeps.

:func:`kept_eigenpairs` returns the eigenpairs whose discarded spectral mass stays below ``rank_tol``
(:func:`choose_rank`), from the secular equation of ``A`` (:func:`softmax_covariance_top_eigh`,
``O(k c)`` per pair) with at least 128 classes and a dense ``eigh`` below. Pure tensor maths.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .graph import DEFAULT_RANK_TOL, softmax_covariance


def choose_rank(eigvals_desc: Tensor, rank_tol: float, max_rank: int | None = None) -> Tensor:
    """Smallest ``r`` per example with discarded mass ``sum_{k>r} lam_k <= rank_tol * sum lam``.

    Eigenvalues below ``c * eps * lam_max`` are treated as zero (``A`` always has the null vector
    ``1``), so ``rank_tol=0`` keeps exactly the numerically non-zero spectrum. Returns ``(n,)`` ints.
    """
    if rank_tol < 0 or rank_tol >= 1:
        raise ValueError(f"rank_tol must lie in [0, 1), got {rank_tol}")
    lam = eigvals_desc.clamp_min(0)
    c = lam.shape[1]
    floor = c * torch.finfo(lam.dtype).eps * lam[:, :1]
    lam = torch.where(lam > floor, lam, torch.zeros_like(lam))
    total = lam.sum(1, keepdim=True)
    # tail[k] = sum_{j >= k} lam_j, with tail[c] = 0
    tail = torch.flip(torch.cumsum(torch.flip(lam, [1]), 1), [1])
    tail = torch.cat([tail, torch.zeros_like(tail[:, :1])], dim=1)
    ok = tail <= rank_tol * total
    rank = ok.to(torch.int64).argmax(1)  # first k where the discarded tail is small enough
    if max_rank is not None:
        rank = rank.clamp_max(max_rank)
    return rank


def softmax_covariance_trace(probs: Tensor) -> Tensor:
    """``tr(A) = sum_i p_i (1 - p_i)`` per example ``(n,)``, with ``1 - p_max`` summed from the others.

    Examples:
        >>> softmax_covariance_trace(torch.tensor([[0.5, 0.5]], dtype=torch.float64)).tolist()
        [0.5]
    """
    top = F.one_hot(probs.argmax(1), probs.shape[1]).to(torch.bool)
    others = torch.where(top, probs.masked_fill(top, 0.0).sum(1, keepdim=True), 1.0 - probs)
    return (probs * others).sum(1)


#: pair counts :func:`kept_eigenpairs` tries with the secular solver before a dense ``eigh`` of ``A``
_SECULAR_PAIRS = (8, 64)
#: below this many classes a batched dense ``eigh`` is cheaper than the per-example secular solver
_SECULAR_MIN_CLASSES = 128


def kept_eigenpairs(
    probs: Tensor, rank_tol: float = DEFAULT_RANK_TOL, max_rank: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The eigenpairs of ``A = diag(p) - pp^T`` the closed form keeps for ``rank_tol``.

    With at least 128 classes, tries :func:`softmax_covariance_top_eigh` for the top 8, then 64 pairs
    (``O(c)`` work per pair instead of the ``O(c^3)`` dense eigh; 30 ms instead of 0.25 s at
    ``c = 1000``, one example at a time): the mass beyond the pairs found is ``tr(A) - sum lam_k``
    with ``tr(A) = sum p_i (1 - p_i)`` known exactly, so the rank rule of :func:`choose_rank` can be
    applied without the rest of the spectrum. When more pairs are needed, or ``rank_tol < 1e-9``
    (where the rank would hinge on eigenvalues near the floor), it falls back to
    ``torch.linalg.eigh`` of the whole matrix.

    Args:
        probs: ``(n, c)`` probabilities (float64).
        rank_tol, max_rank: see :func:`choose_rank`.

    Returns:
        ``(lam, U, rank, discarded)``: kept eigenvalues ``(n, r)`` descending (``r = max rank``,
        clamped at 0), their eigenvectors ``(n, c, r)``, the rank per example ``(n,)`` and the
        discarded spectral mass per example ``(n,)``.

    Examples:
        >>> p = torch.tensor([[0.9, 0.09, 0.01]], dtype=torch.float64)
        >>> lam, U, rank, discarded = kept_eigenpairs(p, rank_tol=0.1)
        >>> rank.tolist(), U.shape
        ([1], torch.Size([1, 3, 1]))
    """
    n, c = probs.shape
    if rank_tol < 0 or rank_tol >= 1:
        raise ValueError(f"rank_tol must lie in [0, 1), got {rank_tol}")
    if n and rank_tol >= 1e-9 and c >= _SECULAR_MIN_CLASSES:
        trace = softmax_covariance_trace(probs)
        for m in _SECULAR_PAIRS:
            m = min(m, c)
            lam, U = softmax_covariance_top_eigh(probs, m)
            floor = c * torch.finfo(lam.dtype).eps * lam[:, :1]
            kept = torch.where(lam > floor, lam, torch.zeros_like(lam))
            beyond = (trace - lam.sum(1)).clamp_min(0)  # spectral mass past the m pairs found
            tail = torch.flip(torch.cumsum(torch.flip(kept, [1]), 1), [1]) + beyond[:, None]
            tail = torch.cat([tail, beyond[:, None]], dim=1)
            ok = tail <= rank_tol * trace[:, None]
            if bool(ok[:, m].all()) or m == c:
                rank = ok.to(torch.int64).argmax(1)
                if max_rank is not None:
                    rank = rank.clamp_max(max_rank)
                r = int(rank.max())
                discarded = lam.clamp_min(0)[:, r:].sum(1) + beyond
                return lam[:, :r].clamp_min(0), U[:, :, :r], rank, discarded
    lam, U = torch.linalg.eigh(softmax_covariance(probs))  # ascending
    lam, U = torch.flip(lam, [1]), torch.flip(U, [2])
    rank = choose_rank(lam, rank_tol, max_rank)
    r = int(rank.max().item()) if n else 0
    return lam[:, :r].clamp_min(0), U[:, :, :r], rank, lam.clamp_min(0)[:, r:].sum(1)


def gradient_aligned_pairs(
    residual: Tensor, lam: Tensor, U: Tensor, discarded: Tensor, trace: Tensor, rank_tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The kept part of ``A`` re-expressed in ``r`` directions that contain ``p - e_t``, if that is cheap.

    The closed form back-propagates ``p - e_t`` (for the gradient) and the ``r`` kept eigenvectors of
    ``A``: ``r + 1`` backward passes. When the model is confident, ``p - e_t`` lies in the kept
    eigen-span to ~1e-9, so those rows span only ``r`` dimensions. With ``w = (p - e_t) / ||p - e_t||``,
    ``K = U diag(lam) U^T`` the kept part and ``P`` the projector onto ``w`` and the top ``r - 1`` left
    singular vectors of ``W = (I - w w^T) U diag(lam)`` (the best such subspace for ``K``), ``A`` is
    replaced by ``P K P``. Since ``(I - P) W`` has rank one, its error obeys::

        ||A - P K P||_* <= ||A - K||_* + ||(I - P) K||_* + ||P K (I - P)||_* <= discarded + 2 sigma_r(W)

    which decides cheaply whether to try. The bound returned is ``discarded`` plus the nuclear norm of
    ``K - R diag(mu) R^T`` measured in an orthonormal basis of the ``2 r`` columns of ``U`` and ``R``
    (round-off of these ``c``-space steps included, plus a ``(c + r) eps tr(K)`` allowance); it must fit
    the budget :func:`choose_rank` gives the dropped eigenvalues, ``rank_tol * tr(A)``, for every example
    (the backward passes are shared by the batch). Then, with ``Q^T K Q = V diag(mu) V^T``
    and ``R = Q V``, the rows ``R`` give ``B = J^T R diag(mu)^{1/2}`` and ``g = J^T R a`` with
    ``a = R^T (p - e_t)``: ``r`` backward passes instead of ``r + 1``.

    Args:
        residual: ``p - e_t`` ``(n, c)`` (float64).
        lam, U, discarded: from :func:`kept_eigenpairs` (``(n, r)``, ``(n, c, r)``, ``(n,)``).
        trace: ``tr(A)`` ``(n,)`` (:func:`softmax_covariance_trace`).
        rank_tol: the spectral budget, relative to ``tr(A)``.

    Returns:
        ``(mu, R, a, bound)``: eigenvalues ``(n, r)`` descending, rows ``(n, c, r)``, gradient
        coefficients ``(n, r)`` and the error bound above ``(n,)``; None when ``r = 0`` or some example's
        bound exceeds its budget.

    Examples:
        >>> p = torch.tensor([[0.999, 0.0009, 0.0001]], dtype=torch.float64)
        >>> lam, U, rank, discarded = kept_eigenpairs(p, rank_tol=1e-3)
        >>> residual = p - torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
        >>> trace = softmax_covariance_trace(p)
        >>> mu, R, a, bound = gradient_aligned_pairs(residual, lam, U, discarded, trace, 1e-3)
        >>> bool(torch.allclose(R @ a[..., None], residual[..., None], rtol=0, atol=1e-15))
        True
    """
    n, c, r = U.shape
    if r == 0 or n == 0:
        return None
    norm = residual.norm(dim=1, keepdim=True)
    fallback = F.one_hot(torch.zeros(n, dtype=torch.long, device=U.device), c).to(U.dtype)
    w = torch.where(norm > 0, residual / norm.clamp_min(torch.finfo(U.dtype).tiny), fallback)
    weighted = U * lam[:, None, :]
    W = weighted - w[:, :, None] * (w[:, None, :] @ weighted)
    left, sigma, _ = torch.linalg.svd(W, full_matrices=False)
    if not bool((discarded + 2.0 * sigma[:, r - 1] <= rank_tol * trace).all()):
        return None
    # Householder QR keeps Q orthonormal to round-off (its first column is +-w) whatever the rank of W
    Q = torch.linalg.qr(torch.cat([w[:, :, None], left[:, :, : r - 1]], dim=2)).Q
    coords = Q.transpose(1, 2) @ U  # (n, r, r): P K P = Q coords diag(lam) coords^T Q^T
    mu, V = torch.linalg.eigh(coords @ (lam[:, :, None] * coords.transpose(1, 2)))
    mu, V = torch.flip(mu, [1]).clamp_min(0), torch.flip(V, [2])
    R = Q @ V
    a = (R.transpose(1, 2) @ residual[:, :, None])[:, :, 0]
    # the error actually made, ||K - R diag(mu) R^T||_*, measured in an orthonormal basis Z of span(U, R)
    # (A = Z Z^T A holds for Householder QR whatever the rank), so round-off above is accounted for too
    Z = torch.linalg.qr(torch.cat([U, R], dim=2)).Q
    zu, zr = Z.transpose(1, 2) @ U, Z.transpose(1, 2) @ R
    diff = zu @ (lam[:, :, None] * zu.transpose(1, 2)) - zr @ (mu[:, :, None] * zr.transpose(1, 2))
    eps = torch.finfo(U.dtype).eps
    bound = discarded + torch.linalg.svdvals(diff).sum(1) + 8 * (c + r) * eps * lam.sum(1)
    if not bool((bound <= rank_tol * trace).all()):
        return None
    return mu, R, a, bound


# ---------------------------------------------------------------------------- top eigenpairs of A
def softmax_covariance_top_eigh(probs: Tensor, k: int, n_iter: int = 72) -> tuple[Tensor, Tensor]:
    """The ``k`` largest eigenpairs of ``A = diag(p) - p p^T`` per example without a dense ``c x c`` eigh.

    ``A`` is a rank-one downdate of a diagonal: with the distinct non-zero probabilities sorted,
    ``d_1 > d_2 > ...``, its eigenvalues interlace them and the ``j``-th largest is the root in
    ``(d_(j+1), d_j)`` of the secular equation ``1 = sum_i p_i^2 / (p_i - lam)``, with eigenvector
    ``u_i ~ p_i / (p_i - lam)``. Each root is found by bisection on the geometric mean of its distance
    ``s`` to the nearer pole (so ``p_i - lam = (p_i - pole) -+ s`` keeps full relative precision and the
    eigenvector stays orthogonal to working precision); ``n_iter`` halvings of ``log s`` reach the
    float64 resolution. Probabilities equal to a few ulps are merged: such a tie of multiplicity ``m``
    adds the eigenvalue ``p`` ``m - 1`` times, with eigenvectors spanning the tie's coordinates
    orthogonally to ``p`` (a Householder basis). ``O(k c)`` per bisection step instead of ``O(c^3)``.
    Zero eigenvalues (beyond the numerical rank) come with zero vectors.

    Args:
        probs: ``(n, c)`` probabilities (float64).
        k: number of eigenpairs, ``0 <= k <= c``.
        n_iter: bisection steps per root.

    Returns:
        ``(lam, U)``: eigenvalues ``(n, k)`` descending and orthonormal eigenvectors ``(n, c, k)``.

    Examples:
        >>> p = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
        >>> lam, U = softmax_covariance_top_eigh(p, 2)
        >>> ref = torch.linalg.eigvalsh(torch.diag(p[0]) - p[0][:, None] * p[0][None, :]).flip(0)
        >>> bool(torch.allclose(lam[0], ref[:2], rtol=0, atol=1e-15))
        True
    """
    n, c = probs.shape
    if not 0 <= k <= c:
        raise ValueError(f"k must lie in [0, {c}], got {k}")
    lams, vecs = [], []
    for p in probs:
        lam, U = _top_eigh_one(p, k, n_iter)
        lams.append(lam)
        vecs.append(U)
    if not lams:
        return probs.new_zeros(0, k), probs.new_zeros(0, c, k)
    return torch.stack(lams), torch.stack(vecs)


def _secular(
    z: Tensor, d: Tensor, gid: Tensor, poles: Tensor, counts: Tensor, go: Tensor, sign: Any, s: Tensor
) -> Tensor:
    """``f(lam) = 1 - sum_i z_i^2 / (d_i - lam)`` at ``lam = poles[go] + sign * s`` (one per row).

    ``d_i - lam`` is formed as ``(d_i - pole) - sign * s``. When the largest probability ``d_1`` is a
    single pole, its term is rewritten ``1 - d_1^2 / (d_1 - lam) = (d_1 r_1 - lam) / (d_1 - lam)`` with
    ``r_1 = sum_{i>1} z_i``, and ``d_1 r_1 - pole`` is expanded without cancellation: at ``d_1 ~ 1`` the
    plain form loses every digit of ``f`` (it is ``O(1 - d_1)`` there).
    """
    pole = poles[go]
    shift = (sign * s)[:, None]
    denom = (d[None, :] - pole[:, None]) - shift
    if int(counts[0]) != 1 or z.shape[0] < 2:
        return 1 - (z[None, :] ** 2 / denom).sum(1)
    d1, r1 = z[0], z[1:].sum()
    excl = (z[None, 1:] * (gid[None, 1:] != go[:, None])).sum(1)  # sum over i > 1 outside the pole's group
    group = (z[None, 1:] * (gid[None, 1:] == go[:, None])).sum(1) - pole  # (m_G - 1) pole for a tie
    num0 = torch.where(go == 0, -d1 * d1, d1 * (excl + group) - pole * r1)
    return (num0 - shift[:, 0]) / denom[:, 0] - (z[None, 1:] ** 2 / denom[:, 1:]).sum(1)


def _top_eigh_one(p: Tensor, k: int, n_iter: int) -> tuple[Tensor, Tensor]:
    c = p.shape[0]
    eps = torch.finfo(p.dtype).eps
    vals, order = torch.sort(p, descending=True)
    tiny = torch.finfo(p.dtype).tiny
    pos = int((vals > tiny / eps).sum())  # smaller probabilities: eigenvalue 0 (far below c eps lam_max)
    # group (near-)ties: consecutive sorted values within a few ulps share one pole
    new_group = torch.ones(pos, dtype=torch.bool, device=p.device)
    if pos > 1:
        new_group[1:] = vals[: pos - 1] - vals[1:pos] > 4 * eps * vals[: pos - 1]
    gid = torch.cumsum(new_group.to(torch.int64), 0) - 1
    poles = vals[:pos][new_group]  # distinct poles, descending
    d = poles[gid]  # snapped diagonal of the positive part (sorted order)
    z = vals[:pos]
    out_lam: list[Tensor] = []
    out_vec: list[Tensor] = []
    m = min(k, poles.shape[0] - 1)  # roots between consecutive poles (the last root is A's null value 0)
    if m > 0:
        counts = torch.bincount(gid, minlength=poles.shape[0])
        hi = 0.5 * (poles[:m] - poles[1 : m + 1])
        mid_f = _secular(z, d, gid, poles, counts, torch.arange(m, device=p.device), -1.0, hi)
        # f decreases in lam: f(mid) > 0 puts the root above mid (nearer the upper pole)
        go = torch.where(mid_f > 0, 0, 1) + torch.arange(m, device=p.device)  # group of the origin pole
        sign = torch.where(mid_f > 0, -1.0, 1.0).to(p.dtype)  # lam = pole + sign * s
        lo = (hi * 2.0**-1000).clamp_min(tiny)
        for _ in range(n_iter):
            s = torch.sqrt(lo) * torch.sqrt(hi)  # no underflow of lo * hi
            h = -sign * _secular(z, d, gid, poles, counts, go, sign, s)  # increasing in s
            lo, hi = torch.where(h < 0, s, lo), torch.where(h < 0, hi, s)
        s = torch.sqrt(lo) * torch.sqrt(hi)
        lam = poles[go] + sign * s
        u = z[None, :] / ((d[None, :] - poles[go][:, None]) - (sign * s)[:, None])
        u = u / u.norm(dim=1, keepdim=True)
        out_lam.append(lam)
        out_vec.append(u)
    # ties: eigenvalue = the pole, m - 1 times, eigenvectors orthogonal to p on the tie's coordinates
    counts = torch.bincount(gid, minlength=poles.shape[0]) if pos else gid
    for g in torch.nonzero(counts > 1).flatten().tolist():
        if g >= k:  # the g-th pole is below at least g eigenvalues already found
            break
        idx = torch.nonzero(gid == g).flatten()
        q = z[idx] / z[idx].norm()
        v = q.clone()
        v[0] -= 1.0
        house = torch.eye(idx.numel(), dtype=p.dtype, device=p.device) - 2 * torch.outer(v, v) / (v @ v)
        basis = torch.zeros(idx.numel() - 1, pos, dtype=p.dtype, device=p.device)
        basis[:, idx] = house[:, 1:].T
        out_lam.append(poles[g].expand(idx.numel() - 1))
        out_vec.append(basis)
    lam_all = torch.cat(out_lam) if out_lam else p.new_zeros(0)
    vec_all = torch.cat(out_vec) if out_vec else p.new_zeros(0, pos)
    top = torch.argsort(lam_all, descending=True)[:k]
    lam_all, vec_all = lam_all[top], vec_all[top]
    j = lam_all.shape[0]
    lam = p.new_zeros(k)
    U = p.new_zeros(c, k)
    if j:
        # Rayleigh-Ritz on the span found: exactly orthonormal vectors (the secular ones lose orthogonality
        # like eps lam_max / gap between tiny eigenvalues); A applied without cancellation, O(c j)
        Q = torch.linalg.qr(vec_all.T).Q  # (pos, j)
        sub = vals[:pos]
        others = torch.cat([sub[1:].sum().reshape(1), 1.0 - sub[1:]])  # 1 - p_i, top one without cancellation
        rest = (sub @ Q)[None, :] - sub[:, None] * Q  # sum_{j != i} p_j Q_j
        rest[0] = sub[1:] @ Q[1:]
        AQ = sub[:, None] * (others[:, None] * Q - rest)
        ritz, W = torch.linalg.eigh(Q.T @ AQ)
        lam[:j] = ritz.flip(0)
        U[order[:pos], :j] = Q @ W.flip(1)  # back to the original class order
    return lam, U
