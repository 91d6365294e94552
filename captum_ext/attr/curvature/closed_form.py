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
from ..softmax_eig import kept_eigenpairs
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
    """

    B: Tensor
    eigvals: Tensor
    rank: Tensor
    discarded: Tensor
    gradient: Tensor

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
    )


def low_rank_factor(
    graph: LossGraph,
    rank_tol: float = DEFAULT_RANK_TOL,
    max_rank: int | None = None,
    vjp_batch: int = 16,
) -> LowRankFactor:
    """Closed-form Gauss-Newton factor ``B`` of the input Hessian (exact for piecewise-linear nets).

    Costs one batched vector-Jacobian product per kept eigenvector of ``A`` plus one for the gradient,
    grouped ``vjp_batch`` at a time; the eigenpairs come from :func:`kept_eigenpairs`. The graph is
    released afterwards.

    Args:
        graph: from :func:`build_loss_graph`.
        rank_tol: relative spectral mass of ``A`` that may be discarded (see :func:`choose_rank`).
        max_rank: optional hard cap on the rank (memory), at the price of exactness.
        vjp_batch: how many VJPs to vectorise in one backward call (memory vs speed).
    """
    lam_r, U, rank, discarded = kept_eigenpairs(graph.probs, rank_tol, max_rank)
    r = lam_r.shape[1]
    discarded = discarded.to(graph.dtype)
    # rows to back-propagate: p - e_t (for the gradient) then u_1..u_r, in the model's dtype
    weights = torch.cat([graph.residual()[None], U.permute(2, 0, 1)], dim=0)
    weights = weights.to(graph.dtype)
    lam_r = lam_r.to(graph.dtype)
    chunks = []
    for start in range(0, r + 1, max(1, vjp_batch)):
        last = start + vjp_batch >= r + 1
        chunks.append(graph.batched_vjp(weights[start : start + vjp_batch], retain_graph=not last))
    vjps = torch.cat(chunks, dim=0)  # (r + 1, n, d)
    gradient = vjps[0]
    B = (vjps[1:] * lam_r.T.sqrt()[:, :, None]).permute(1, 2, 0).contiguous()  # (n, d, r)
    return LowRankFactor(B=B, eigvals=lam_r, rank=rank, discarded=discarded, gradient=gradient)


@register
class ClosedFormPath(CurvaturePath):
    """``hessian="closed_form"``: the factor ``B`` (``r + 1`` backward passes, ``d r`` floats)."""

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
        return Curvature(factor, factor.gradient, top, top, 0.0, factor.rank, per_copy.B.shape[2] + 1)
