"""Input Hessians of the cross-entropy loss: closed-form low-rank factor and exact HVPs.

For a classifier with logits ``f(x)`` (``c`` classes), ``p = softmax(f)`` and the loss
``l = CE(f(x), t)``, the input Hessian is (Singla et al., 2019, Prop. 1 and App. C)::

    H = J^T A J + sum_i (p_i - 1[i = t]) * Hess f_i,      A = diag(p) - p p^T,   J = df/dx

For piecewise-linear networks the second term vanishes almost everywhere. Diagonalising the small
``c x c`` matrix ``A = U diag(lam) U^T`` gives ``H = B B^T`` with ``B = [sqrt(lam_k) J^T u_k]``: one
vector-Jacobian product per kept eigenvector (:func:`low_rank_factor`). With ``B``, every ``H v`` is
a matmul, the top eigenvalue is that of the ``r x r`` matrix ``B^T B``, and
``(2 lambda2 I - H)^{-1} g`` has a Woodbury closed form.

:class:`ExactHessian` computes ``H v`` by double backward (valid for any twice-differentiable model)
and the top eigenvalue by power iteration, which is the reference algorithm of the paper.
:func:`structural_piecewise_linear` recognises piecewise-linear nets from the autograd graph for free;
:func:`logit_curvature_gap` tells the two cases apart with one double backward where it cannot. The
kept eigenpairs of ``A`` come from its secular equation (:func:`kept_eigenpairs`), not a dense eigh.

Everything works on a batch: per-example quantities are computed together because examples do not
interact (the caller checks that the model is in eval mode). Flat vectors are ``(n, d)`` with ``d``
the total number of features over all inputs; batches of directions are ``(n, m, d)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._format import run_forward

#: Default share of A's spectral mass the closed form may drop. The Hessian error is then at most
#: ``1e-3 * tr(A) * ||J||_2^2``; on trained CNNs the attribution changes by ~1e-9 relative (see
#: benchmarks/results/bench_caso.json) while the rank, hence the cost, drops by 2-4x at 100 classes.
DEFAULT_RANK_TOL = 1e-3


def flatten_features(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate batch-first tensors into ``(n, d)`` (``d`` = all features of all tensors)."""
    n = tensors[0].shape[0]
    return torch.cat([t.reshape(n, -1) for t in tensors], dim=1)


def unflatten_features(flat: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Inverse of :func:`flatten_features` for ``flat`` of shape ``(..., d)``; leading dims kept."""
    lead = flat.shape[:-1]
    out, start = [], 0
    for t in like:
        size = t[0].numel()
        out.append(flat[..., start : start + size].reshape(*lead, *t.shape[1:]))
        start += size
    return tuple(out)


@dataclass
class LossGraph:
    """A forward pass kept alive for repeated differentiation.

    Attributes:
        inputs: leaf copies of the inputs with ``requires_grad=True``.
        logits: ``(n, c)`` model output.
        target: ``(n,)`` class indices.
        probs: ``softmax(logits)``, detached and in float64 so that ``1 - p_t`` and ``A`` keep their
            precision at high confidence (where float32 ``p_t - 1`` cancels catastrophically).
        binary: the model returned one logit ``z``; ``logits`` is ``[0, z]`` (binary logistic loss).
    """

    inputs: tuple[Tensor, ...]
    logits: Tensor
    target: Tensor
    probs: Tensor
    binary: bool = False

    @property
    def n(self) -> int:
        return self.logits.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """Working dtype (that of the model's output)."""
        return self.logits.dtype

    def residual(self) -> Tensor:
        """``p - e_t`` in float64, with ``p_t - 1`` computed as ``-sum_{j != t} p_j`` (no cancellation)."""
        onehot = F.one_hot(self.target, self.probs.shape[1]).to(torch.bool)
        rest = self.probs.masked_fill(onehot, 0.0).sum(1, keepdim=True)
        return torch.where(onehot, -rest, self.probs)

    def vjp(self, grad_logits: Tensor, retain_graph: bool = True) -> Tensor:
        """``J^T w`` per example for ``w = grad_logits`` of shape ``(n, c)``; returns ``(n, d)``."""
        grads = torch.autograd.grad(
            self.logits,
            self.inputs,
            grad_outputs=grad_logits,
            retain_graph=retain_graph,
            allow_unused=True,
        )
        return flatten_features(_zeros_for_none(grads, self.inputs))

    def batched_vjp(self, grad_logits: Tensor, retain_graph: bool = True) -> Tensor:
        """``J^T w_k`` for a stack ``grad_logits`` of shape ``(k, n, c)``; returns ``(k, n, d)``.

        Uses autograd's vectorised ``is_grads_batched`` and falls back to a loop for models whose
        operations have no batching rule.
        """
        try:
            grads = torch.autograd.grad(
                self.logits,
                self.inputs,
                grad_outputs=grad_logits,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            k = grad_logits.shape[0]
            filled = [
                torch.zeros(k, *x.shape, dtype=x.dtype, device=x.device) if gr is None else gr
                for gr, x in zip(grads, self.inputs, strict=True)
            ]
            out = torch.cat([gr.reshape(k, self.n, -1) for gr in filled], dim=2)
        except RuntimeError:
            out = torch.stack([self.vjp(w) for w in grad_logits])
        if not retain_graph:
            self.release()
        return out

    def release(self) -> None:
        """Drop the graph (frees memory held by saved activations)."""
        self.logits = self.logits.detach()


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, like, strict=True)]


def build_loss_graph(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    additional_args: tuple[Any, ...] = (),
    target: Tensor | None = None,
) -> LossGraph:
    """Run the model on leaf copies of ``inputs``; ``target=None`` picks the predicted class.

    A single-logit output ``z`` is read as the binary logistic loss: the logits become ``[0, z]``
    (class 1 is ``z > 0``). Raises ``ValueError`` when the output does not depend on the inputs.
    """
    leaves = tuple(x.detach().requires_grad_(True) for x in inputs)
    logits = run_forward(forward_func, leaves, additional_args)
    if not logits.is_floating_point():
        raise TypeError(f"forward_func must return floating-point logits, got {logits.dtype}")
    if not logits.requires_grad:
        raise ValueError(
            "forward_func's output does not depend on the inputs (no gradient path from the inputs to "
            "the output); is the model detached, run under no_grad, or ignoring its input?"
        )
    binary = logits.shape[1] == 1
    if binary:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    if target is None:
        target = logits.detach().argmax(dim=1)
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    return LossGraph(leaves, logits, target, probs, binary)


def softmax_covariance(probs: Tensor) -> Tensor:
    """``A = diag(p) - p p^T`` per example, ``(n, c, c)``; the Hessian of CE w.r.t. the logits.

    The diagonal ``p_i (1 - p_i)`` is formed as ``p_i * sum_{j != i} p_j`` to avoid cancellation.
    """
    top = F.one_hot(probs.argmax(1), probs.shape[1]).to(torch.bool)
    # 1 - p_i: for the largest p_i sum the small ones directly; elsewhere 1 - p_i >= 1/2 is benign
    others = torch.where(
        top, probs.masked_fill(top, 0.0).sum(1, keepdim=True), probs.sum(1, keepdim=True) - probs
    )
    off = -probs[:, :, None] * probs[:, None, :]
    return off - torch.diag_embed(torch.diagonal(off, dim1=1, dim2=2)) + torch.diag_embed(probs * others)


def loss_gradient_from_logits(graph: LossGraph) -> Tensor:
    """``g = J^T (p - e_t)``, the input-gradient of the per-example loss, ``(n, d)``."""
    return graph.vjp(graph.residual().to(graph.dtype))


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
        top = F.one_hot(probs.argmax(1), c).to(torch.bool)
        others = torch.where(top, probs.masked_fill(top, 0.0).sum(1, keepdim=True), 1.0 - probs)
        trace = (probs * others).sum(1)
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


def stable_loss_surrogate(graph: LossGraph) -> Tensor:
    """A scalar with the same input-gradient and input-Hessian as the summed loss at the current inputs.

    ``psi = r.f + 1/2 (f - f0)^T A (f - f0)`` with the constants ``r = p - e_t`` and ``A`` (computed in
    float64 without cancellation) and ``f0`` the current logits. At ``f = f0``:
    ``grad psi = J^T r = g`` and ``Hess psi = J^T A J + sum_i r_i Hess f_i = H``. Differentiating
    ``psi`` instead of the cross-entropy keeps float32 gradients and HVPs accurate at high confidence,
    where autograd's softmax backward computes ``p_t - 1`` and ``u_t - p.u`` by cancellation.
    """
    dtype = graph.dtype
    r = graph.residual().to(dtype)
    A = softmax_covariance(graph.probs).to(dtype)
    diff = graph.logits - graph.logits.detach()
    return (graph.logits * r).sum() + 0.5 * torch.einsum("nc,ncd,nd->", diff, A, diff)


class ExactHessian:
    """Exact input-Hessian-vector products of the per-example loss by double backward.

    Valid for any twice-differentiable model. Differentiates :func:`stable_loss_surrogate`, which has
    the loss's exact gradient and Hessian but no float32 cancellation. ``gradient`` is ``g`` (computed
    with ``create_graph``); :meth:`hvp` and :meth:`top_eigenvalue` count their backward passes in
    ``n_hvp``.
    """

    def __init__(self, graph: LossGraph, samples: int = 1):
        self.graph = graph
        self.samples = samples
        grads = torch.autograd.grad(
            stable_loss_surrogate(graph), graph.inputs, create_graph=True, allow_unused=True
        )
        self._grads = _zeros_for_none(grads, graph.inputs)
        flat = flatten_features([gr.detach() for gr in self._grads])
        self.gradient = flat.reshape(-1, samples, flat.shape[1]).mean(1)
        self._differentiable = any(gr.requires_grad for gr in self._grads)
        self.n_hvp = 0

    def hvp(self, v: Tensor) -> Tensor:
        """``H v`` for ``v`` of shape ``(n, m, d)`` or ``(n, d)``; one double backward per ``m``.

        With ``samples > 1`` the graph holds ``samples`` consecutive copies of each example (e.g. noisy
        ones) and the product is with their mean Hessian.
        """
        if v.dim() == 2:
            return self.hvp(v[:, None, :])[:, 0]
        if self.samples > 1:
            n, m, d = v.shape
            out = self._raw_hvp(v.repeat_interleave(self.samples, 0))
            return out.reshape(n, self.samples, m, d).mean(1)
        return self._raw_hvp(v)

    def _raw_hvp(self, v: Tensor) -> Tensor:
        if not self._differentiable:
            return torch.zeros_like(v)
        cols = []
        for j in range(v.shape[1]):
            parts = unflatten_features(v[:, j], self.graph.inputs)
            hv = torch.autograd.grad(
                self._grads,
                self.graph.inputs,
                grad_outputs=parts,
                retain_graph=True,
                allow_unused=True,
            )
            cols.append(flatten_features(_zeros_for_none(hv, self.graph.inputs)))
            self.n_hvp += 1
        return torch.stack(cols, dim=1)

    def top_eigenvalue(self, n_iter: int = 10, init: Tensor | None = None) -> Tensor:
        """Largest eigenvalue per example by power iteration (paper: 10 iterations), ``(n,)``.

        Starts from ``init`` (default: the loss gradient, which Theorem 4 of the paper shows is close
        to the top eigenvector at high confidence; deterministic and independent of the batch). If
        the dominant eigenvalue found is negative (possible for non-piecewise-linear nets), a shifted
        iteration finds the largest algebraic one. The result is clamped at 0.
        """
        mu = self._power(n_iter, init, shift=None)
        if bool((mu < 0).any()):
            mu = torch.where(mu < 0, self._power(n_iter, init, shift=-mu), mu)
        return mu.clamp_min(0)

    def _power(self, n_iter: int, init: Tensor | None, shift: Tensor | None) -> Tensor:
        v = self.gradient.clone() if init is None else init.clone()
        zero = v.norm(dim=1) == 0
        if bool(zero.any()):  # no gradient: any direction will do
            v[zero] = 1.0
        v = v / v.norm(dim=1, keepdim=True)
        mu = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for _ in range(max(1, n_iter)):
            hv = self.hvp(v)
            if shift is not None:
                hv = hv + shift[:, None] * v
            mu = (v * hv).sum(1)
            norm = hv.norm(dim=1, keepdim=True)
            v = torch.where(norm > 0, hv / norm.clamp_min(torch.finfo(v.dtype).tiny), v)
        return mu if shift is None else mu - shift

    def release(self) -> None:
        self._grads = [gr.detach() for gr in self._grads]
        self.graph.release()


def logit_curvature_gap(graph: LossGraph, v: Tensor, w: Tensor) -> Tensor:
    """Relative size of the logits' own curvature along ``v``, per example, by one double backward.

    Returns ``||Hess(w.f) v|| * (1 + ||x||) / (||J^T w|| * ||v||)`` for cotangents ``w`` ``(n, c)``.
    The loss Hessian equals its Gauss-Newton part ``J^T A J`` exactly when every logit has zero
    curvature, which autograd reports as exact zeros for ReLU / LeakyReLU / max-pool / linear / conv /
    eval-mode BatchNorm networks; smooth activations (softplus, GELU, sigmoid) give an O(1) value.
    Probing the logits rather than the loss avoids the catastrophic cancellation of ``p_t - 1`` in
    float32 at high confidence. Keeps the graph alive.
    """
    inputs = graph.inputs
    parts = unflatten_features(v, inputs)
    grads = torch.autograd.grad(graph.logits, inputs, grad_outputs=w, create_graph=True, allow_unused=True)
    grads = _zeros_for_none(grads, inputs)
    jt_w = flatten_features([gr.detach() for gr in grads])
    if any(gr.requires_grad for gr in grads):
        hv = torch.autograd.grad(grads, inputs, grad_outputs=parts, retain_graph=True, allow_unused=True)
        hv = flatten_features(_zeros_for_none(hv, inputs))
    else:
        hv = torch.zeros_like(v)
    x_norm = flatten_features([x.detach() for x in inputs]).norm(dim=1)
    tiny = torch.finfo(v.dtype).tiny
    return hv.norm(dim=1) * (1 + x_norm) / (jt_w.norm(dim=1) * v.norm(dim=1)).clamp_min(tiny)


# ---------------------------------------------------------------------------- structural curvature probe
#: autograd nodes that are piecewise linear in every input they receive (selections, reshapes, sums,
#: max / ReLU-type activations, pooling by averages or maxima)
_PL_ANY = frozenset(
    {
        "AbsBackward0",
        "AdaptiveAvgPool1DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AdaptiveAvgPool3DBackward0",
        "AdaptiveMaxPool1DBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
        "AddBackward0",
        "AddBackward1",
        "AliasBackward0",
        "AmaxBackward0",
        "AminBackward0",
        "AsStridedBackward0",
        "AvgPool2DBackward0",
        "AvgPool3DBackward0",
        "CatBackward0",
        "ClampBackward1",
        "ClampMaxBackward0",
        "ClampMinBackward0",
        "CloneBackward0",
        "ConstantPadNdBackward0",
        "DivBackward1",
        "ExpandBackward0",
        "FlipBackward0",
        "HardtanhBackward0",
        "IndexBackward0",
        "IndexSelectBackward0",
        "GatherBackward0",
        "LeakyReluBackward0",
        "LeakyReluBackward1",
        "MaxBackward0",
        "MaxBackward1",
        "MaximumBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "MeanBackward0",
        "MeanBackward1",
        "MinBackward0",
        "MinBackward1",
        "MinimumBackward0",
        "MulBackward1",
        "NegBackward0",
        "PermuteBackward0",
        "ReflectionPad1DBackward0",
        "ReflectionPad2DBackward0",
        "ReluBackward0",
        "RepeatBackward0",
        "ReplicationPad1DBackward0",
        "ReplicationPad2DBackward0",
        "ReshapeAliasBackward0",
        "RollBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "StackBackward0",
        "SubBackward0",
        "SubBackward1",
        "SumBackward0",
        "SumBackward1",
        "TBackward0",
        "ThresholdBackward0",
        "ToCopyBackward0",
        "TransposeBackward0",
        "UnbindBackward0",
        "UnsafeViewBackward0",
        "UnsqueezeBackward0",
        "UpsampleNearest2DBackward0",
        "ViewBackward0",
        "WhereBackward0",
    }
)
#: nodes that are linear in ONE operand: piecewise linear only when no other operand depends on the input
_PL_SINGLE = frozenset(
    {
        "AddmmBackward0",
        "BmmBackward0",
        "ConvolutionBackward0",
        "MmBackward0",
        "MulBackward0",
        "MvBackward0",
        "PreluKernelBackward0",
    }
)
#: batch-norm nodes: affine in the input in eval mode (``_saved_training`` False), curved in training mode
_BATCH_NORM = frozenset({"NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0"})
#: output-only nodes: ``log_softmax`` shifts each example's logits by a constant, which the loss ignores
_HEAD = frozenset({"LogSoftmaxBackward0"})


def structural_piecewise_linear(graph: LossGraph) -> tuple[bool, str]:
    """Whether the logits are piecewise linear in the inputs, read from the autograd graph (no passes).

    Walks ``graph.logits.grad_fn`` back to the input leaves and inspects every node that depends on an
    input. The answer is ``True`` only when each of them is a known piecewise-linear operation
    (ReLU-type activations, max / average pooling, reshapes, selections, sums, ``log_softmax`` as the
    output node) or an operation linear in its one input-dependent operand (matrix products,
    convolutions and products by tensors that do not depend on the input, eval-mode batch norm, division
    of an input-dependent numerator). Then the logits' curvature is zero almost everywhere and the loss
    Hessian is its Gauss-Newton part. Any other node (smooth activations, normalisation by statistics of
    the input, products of two input-dependent tensors such as attention's ``Q K^T``, custom functions)
    gives ``False``: "unknown", to be settled by :func:`logit_curvature_gap`. Sound by construction, not
    complete.

    Returns:
        ``(piecewise_linear, reason)``; ``reason`` names the first node that was not recognised.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> structural_piecewise_linear(build_loss_graph(relu, (torch.randn(2, 4),)))
        (True, 'all input-dependent nodes are piecewise linear')
        >>> gelu = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
        >>> structural_piecewise_linear(build_loss_graph(gelu, (torch.randn(2, 4),)))
        (False, 'GeluBackward0')
    """
    kind, names = _classify_graph(graph)
    if kind == "piecewise_linear":
        return True, "all input-dependent nodes are piecewise linear"
    return False, names[0]


#: autograd nodes of smooth, genuinely curved operations that all have a double backward: a graph whose
#: only non-piecewise-linear nodes are of these kinds is curved and the exact path can differentiate it
_SMOOTH = frozenset(
    {
        "GeluBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
        "SoftplusBackward0",
        "EluBackward0",
        "SiluBackward0",
        "MishBackward0",
        "LogSigmoidBackward0",
        "NativeLayerNormBackward0",
        "SoftmaxBackward0",
        "SafeSoftmaxBackward0",
        "ExpBackward0",
        "LogBackward0",
        "SqrtBackward0",
        "RsqrtBackward0",
    }
)


#: products and quotients: smooth with a double backward whichever operands depend on the input
_PRODUCTS = frozenset({"DivBackward0", "BaddbmmBackward0", "MvBackward0", "DotBackward0"})


def structural_curvature(graph: LossGraph) -> tuple[str, tuple[str, ...]]:
    """Classify the logits' dependence on the inputs from the autograd graph (no passes).

    Returns:
        ``(kind, names)``: ``kind`` is ``"piecewise_linear"`` (as :func:`structural_piecewise_linear`
        says, ``names`` empty), ``"smooth"`` (every unrecognised input-dependent node is a smooth
        operation with a double backward, e.g. GELU, tanh, LayerNorm, softmax: take the exact path
        without probing) or ``"unknown"`` (settle it with :func:`logit_curvature_gap`); ``names`` are
        the unrecognised nodes' types in graph order. Calling a net "smooth" is always safe: the exact
        path is correct for every twice-differentiable net, only slower than the closed form.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> gelu = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
        >>> structural_curvature(build_loss_graph(gelu, (torch.randn(2, 4),)))
        ('smooth', ('GeluBackward0',))
        >>> structural_curvature(build_loss_graph(lambda x: x * x, (torch.randn(2, 4),)))
        ('smooth', ('MulBackward0',))
        >>> structural_curvature(build_loss_graph(torch.sin, (torch.randn(2, 4),)))
        ('unknown', ('SinBackward0',))
    """
    return _classify_graph(graph)


def _input_dependence(graph: LossGraph, root: Any) -> dict[Any, bool]:
    """Every node reachable from ``root`` mapped to whether it depends on one of the inputs."""
    leaves = {id(x) for x in graph.inputs}
    depends: dict[Any, bool] = {}
    # iterative post-order: a node depends on the input when one of its children does
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node in depends:
            continue
        if type(node).__name__ == "AccumulateGrad":
            depends[node] = id(node.variable) in leaves
            continue
        children = [nxt for nxt, _ in node.next_functions if nxt is not None]
        if expanded:
            depends[node] = any(depends.get(ch, False) for ch in children)
            continue
        stack.append((node, True))
        stack.extend((ch, False) for ch in children if ch not in depends)
    return depends


def _classify_graph(graph: LossGraph) -> tuple[str, tuple[str, ...]]:
    root = graph.logits.grad_fn
    if root is None:
        return "unknown", ("logits have no grad_fn",)
    depends = _input_dependence(graph, root)
    names: list[str] = []
    smooth = True
    for node, dep in depends.items():
        name = type(node).__name__
        if not dep or name == "AccumulateGrad" or name in _PL_ANY:
            continue
        operands = [depends.get(nxt, False) if nxt is not None else False for nxt, _ in node.next_functions]
        n_dep = sum(operands)
        if name in _PL_SINGLE and n_dep == 1:
            continue
        if name == "DivBackward0" and operands[0] and n_dep == 1:  # x / c, not c / x
            continue
        if name in _BATCH_NORM and n_dep == 1 and getattr(node, "_saved_training", None) is False:
            continue
        if name in _HEAD and node is root:
            continue
        names.append(name)
        # a product or quotient of input-dependent tensors (attention's Q K^T) is smooth and curved
        bilinear = (name in _PL_SINGLE and n_dep > 1) or name in _PRODUCTS
        smooth = smooth and (name in _SMOOTH or bilinear)
    if not names:
        return "piecewise_linear", ()
    return ("smooth" if smooth else "unknown"), tuple(names)


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
