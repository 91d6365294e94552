"""The closed-form low-rank factor ``H = B B^T`` (exact for piecewise-linear nets).

Diagonalising the small ``c x c`` matrix ``A = diag(p) - p p^T = U diag(lam) U^T`` gives the
Gauss-Newton part of the input Hessian as ``B B^T`` with ``B = [sqrt(lam_k) J^T u_k]``: one
vector-Jacobian product per kept eigenvector (:func:`low_rank_factor`). With ``B`` every ``H v`` is a
matmul, ``L`` is the top eigenvalue of the ``r x r`` matrix ``B^T B`` and ``(2 lambda2 I - H)^{-1} g``
has a Woodbury closed form. It is the whole input Hessian exactly when the logits have no curvature at
the point (piecewise-linear nets: ReLU, max-pool, linear, conv, eval-mode BatchNorm, Hardsigmoid), and
needs only first derivatives, so it also works for layers without a double backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import DEFAULT_RANK_TOL, LossGraph
from ..softmax_eig import gradient_aligned_pairs, kept_eigenpairs, softmax_covariance_trace
from .analysis import GraphAnalysis
from .registry import Curvature, CurvaturePath, register


@dataclass
class LowRankFactor:
    """``H ~= B B^T`` per example with ``B`` of shape ``(n, d, r)``.

    Attributes:
        B: the factor; column ``k`` is ``sqrt(lam_k) J^T u_k``.
        eigvals: kept eigenvalues of ``A`` ``(n, r)``, descending.
        rank: rank each example needed for its tolerance ``(n,)`` (``B`` holds ``max(rank)`` columns
            for every example: the extra columns are exact eigen-directions too, kept for free).
        discarded: spectral mass of ``A`` left out, per example ``(n,)``.
        gradient: the loss input-gradient ``g`` computed in the same batched backward ``(n, d)``.
        n_vjp: backward passes spent (``r + 1``, or ``r`` when the gradient came from the columns).
    """

    B: Tensor
    eigvals: Tensor
    rank: Tensor
    discarded: Tensor
    gradient: Tensor
    n_vjp: int = 0

    def hvp(self, v: Tensor) -> Tensor:
        """``H v`` for ``v`` of shape ``(n, m, d)`` (or ``(n, d)``): two small matmuls."""
        if v.dim() == 2:
            return self.hvp(v[:, None, :])[:, 0]
        coeff = torch.einsum("ndr,nmd->nmr", self.B, v)
        return torch.einsum("ndr,nmr->nmd", self.B, coeff)

    def gram(self) -> Tensor:
        """``B^T B`` ``(n, r, r)``: same non-zero spectrum as ``H``."""
        return self.B.transpose(1, 2) @ self.B

    def top_eigenvalue(self) -> Tensor:
        """Largest eigenvalue of ``H`` per example, exactly, from the ``r x r`` Gram matrix."""
        if self.B.shape[2] == 0:
            return torch.zeros(self.B.shape[0], dtype=self.B.dtype, device=self.B.device)
        return torch.linalg.eigvalsh(self.gram())[:, -1].clamp_min(0)

    def solve_shifted(self, g: Tensor, lambda2: Tensor) -> Tensor:
        """``(2 lambda2 I - B B^T)^{-1} g`` by Woodbury.

        Computed as ``(g + B (2 lambda2 I_r - B^T B)^{-1} B^T g) / (2 lambda2)``: an ``r x r`` solve.

        Args:
            g: ``(n, d)``.
            lambda2: ``(n,)``, each with ``2 lambda2 > lambda_max(H)``.
        """
        two_l2 = (2.0 * lambda2)[:, None]
        r = self.B.shape[2]
        if r == 0:
            return g / two_l2
        eye = torch.eye(r, dtype=g.dtype, device=g.device)
        small = two_l2[:, :, None] * eye - self.gram()
        btg = torch.einsum("ndr,nd->nr", self.B, g)
        sol = torch.linalg.solve(small, btg[:, :, None])[:, :, 0]
        return (g + torch.einsum("ndr,nr->nd", self.B, sol)) / two_l2


def group_mean_factor(factor: LowRankFactor, samples: int) -> LowRankFactor:
    """Average ``samples`` consecutive examples' Hessians and gradients (SmoothCASO, paper Def. 4).

    ``mean_s B_s B_s^T = B' B'^T`` with ``B' = [B_1, ..., B_S] / sqrt(S)``: still low rank (``S r``), so
    every closed-form property (matmul HVPs, exact ``L``, Woodbury solve) carries over.
    """
    if samples == 1:
        return factor
    ns, d, r = factor.B.shape
    if ns % samples:
        raise ValueError(f"batch of {ns} is not a whole number of groups of {samples}")
    n = ns // samples
    B = factor.B.reshape(n, samples, d, r).permute(0, 2, 1, 3).reshape(n, d, samples * r)
    return LowRankFactor(
        B=B / math.sqrt(samples),
        eigvals=factor.eigvals.reshape(n, samples * r) / samples,
        rank=factor.rank.reshape(n, samples).amax(1),
        discarded=factor.discarded.reshape(n, samples).mean(1),
        gradient=factor.gradient.reshape(n, samples, d).mean(1),
        n_vjp=factor.n_vjp,
    )


def low_rank_factor(
    graph: LossGraph,
    rank_tol: float = DEFAULT_RANK_TOL,
    max_rank: int | None = None,
    vjp_batch: int = 16,
) -> LowRankFactor:
    """Closed-form Gauss-Newton factor ``B`` of the input Hessian (exact for piecewise-linear nets).

    Costs one batched vector-Jacobian product per kept eigenvector of ``A`` plus one for the gradient,
    grouped ``vjp_batch`` at a time; the eigenpairs come from :func:`kept_eigenpairs`. When ``p - e_t``
    lies in the kept eigen-span to within the same ``rank_tol`` budget (a confident model), the gradient's
    pass is saved: :func:`gradient_aligned_pairs` re-expresses the kept part in ``r`` rows that contain
    ``p - e_t`` and ``g`` is a combination of their VJPs. The graph is released afterwards.

    Args:
        graph: from :func:`build_loss_graph`.
        rank_tol: relative spectral mass of ``A`` that may be discarded (see :func:`choose_rank`).
        max_rank: optional hard cap on the rank (memory), at the price of exactness.
        vjp_batch: how many VJPs to vectorise in one backward call (memory vs speed).
    """
    lam_r, U, rank, discarded = kept_eigenpairs(graph.probs, rank_tol, max_rank)
    residual = graph.residual()
    aligned = gradient_aligned_pairs(
        residual, lam_r, U, discarded, softmax_covariance_trace(graph.probs), rank_tol
    )
    if aligned is None:  # rows: p - e_t (for the gradient) then u_1..u_r
        rows = torch.cat([residual[None], U.permute(2, 0, 1)], dim=0)
    else:
        lam_r, R, coeffs, discarded = aligned
        rows = R.permute(2, 0, 1)
    vjps = _stacked_vjps(graph, rows.to(graph.dtype), vjp_batch)  # (rows, n, d)
    lam_r = lam_r.to(graph.dtype)
    if aligned is None:
        gradient, columns = vjps[0], vjps[1:]
    else:
        columns = vjps
        gradient = torch.einsum("knd,nk->nd", columns, coeffs.to(graph.dtype))
    B = (columns * lam_r.T.sqrt()[:, :, None]).permute(1, 2, 0).contiguous()  # (n, d, r)
    return LowRankFactor(
        B=B,
        eigvals=lam_r,
        rank=rank,
        discarded=discarded.to(graph.dtype),
        gradient=gradient,
        n_vjp=rows.shape[0],
    )


def _stacked_vjps(graph: LossGraph, rows: Tensor, vjp_batch: int) -> Tensor:
    """``J^T w`` for every row ``w`` of ``rows`` ``(k, n, c)``, ``vjp_batch`` per backward call."""
    k = rows.shape[0]
    step = max(1, vjp_batch)
    chunks = []
    for start in range(0, k, step):
        chunks.append(graph.batched_vjp(rows[start : start + step], retain_graph=start + step < k))
    return torch.cat(chunks, dim=0)


@register
class ClosedFormPath(CurvaturePath):
    """``hessian="closed_form"``: the factor ``B`` (``r`` or ``r + 1`` backward passes, ``d r`` floats)."""

    name = "closed_form"
    needs = ("factor_memory",)

    def not_exact_because(self, analysis: GraphAnalysis) -> str | None:
        return (
            None
            if analysis.zero_curvature
            else f"it is the Gauss-Newton part only: {analysis.curved_because}"
        )

    def predict(self, ranks, d, products, costs, itemsize, vjp_batch, packed):
        n = ranks.numel()
        columns = float(ranks.sum()) if packed else n * float(ranks.max())
        time = columns * costs.backward + n * costs.backward + n * costs.eigh  # columns, gradient, eigh of A
        memory = int(columns * d * itemsize + min(vjp_batch, float(ranks.max()) + 1) * n * d * itemsize)
        return time, memory

    def build(self, graph: LossGraph, rank_tol: float, max_rank: int | None, samples: int) -> Curvature:
        per_copy = low_rank_factor(graph, rank_tol=rank_tol, max_rank=max_rank)
        factor = group_mean_factor(per_copy, samples)
        top = factor.top_eigenvalue()
        return Curvature(factor, factor.gradient, top, top, 0.0, factor.rank, per_copy.n_vjp)
