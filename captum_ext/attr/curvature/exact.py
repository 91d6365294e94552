"""Exact input-Hessian-vector products of the per-example loss by double backward.

Valid for any model whose layers all have a real second derivative. :func:`stable_loss_surrogate`
has the loss's exact gradient and Hessian without float32 cancellation at high confidence.
:class:`ExactHessian` refuses (``NoDoubleBackwardError``) rather than answer with the zeros autograd
produces when a backward is detached: a zero Hessian beside a nonzero loss gradient is impossible (the
Gauss-Newton part ``J^T A J`` is nonzero whenever ``g = J^T (p - e_t)`` is), so it is a detected
contradiction, not an answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._autograd import NoDoubleBackwardError, input_gradient, input_hvp
from ..graph import LossGraph, flatten_features, unflatten_features
from .analysis import GraphAnalysis
from .gauss_newton import apply_softmax_covariance
from .registry import Curvature, CurvaturePath, register


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
    diff = graph.logits - graph.logits.detach()
    # A applied matrix-free (O(c) per example and product, not O(c^2)): each HVP differentiates it
    return (graph.logits * r).sum() + 0.5 * (
        diff * apply_softmax_covariance(graph.probs.to(dtype), diff)
    ).sum()


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
        self._grads = input_gradient(stable_loss_surrogate(graph), graph.inputs, create_graph=True)
        flat = flatten_features([gr.detach() for gr in self._grads])
        self.gradient = flat.reshape(-1, samples, flat.shape[1]).mean(1)
        if not any(gr.requires_grad for gr in self._grads) and bool((flat != 0).any()):
            raise NoDoubleBackwardError(
                "detected contradiction: double backward reports a zero input Hessian, but the loss "
                "gradient is nonzero, so the Gauss-Newton part J^T A J is not zero; a layer's backward is "
                "detached (a custom autograd.Function marked @once_differentiable, or a compiled graph)"
            )
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
        cols = []
        for j in range(v.shape[1]):
            parts = unflatten_features(v[:, j], self.graph.inputs)
            cols.append(flatten_features(input_hvp(self._grads, self.graph.inputs, parts, strict=True)))
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


@register
class ExactPath(CurvaturePath):
    """``hessian="exact"``: double-backward products, ``L`` by Lanczos; right for any curvature."""

    name = "exact"
    needs = ("double_backward",)

    def not_exact_because(self, analysis: GraphAnalysis) -> str | None:
        if analysis.double_backward:
            return None
        return f"it needs a second derivative through every layer: {analysis.no_double_backward_because}"

    def predict(self, ranks, d, products, costs, itemsize, vjp_batch, packed):
        n = ranks.numel()
        # one gradient pass that keeps its graph, then the products (measured: ~1.0-1.2 backward passes)
        return n * costs.backward + products * n * costs.double_backward, 4 * n * d * itemsize

    def build(self, graph: LossGraph, rank_tol: float, max_rank: int | None, samples: int) -> Curvature:
        exact = ExactHessian(graph, samples=samples)
        rank = torch.zeros(graph.n // samples, dtype=torch.long, device=graph.logits.device)
        # top=None: L by Lanczos (or power iteration for solver="paper"); lower=None: H may be indefinite
        return Curvature(exact, exact.gradient, None, None, None, rank, 1)
