"""The loss graph CASO differentiates: one forward pass kept alive, and the softmax quantities built on it.

For a classifier with logits ``f(x)`` (``c`` classes), ``p = softmax(f)`` and the loss
``l = CE(f(x), t)``, the input Hessian is (Singla et al., 2019, Prop. 1 and App. C)::

    H = J^T A J + sum_i (p_i - 1[i = t]) * Hess f_i,      A = diag(p) - p p^T,   J = df/dx

:class:`LossGraph` holds the forward pass (leaf copies of the inputs, the logits, ``p`` in float64),
:func:`softmax_covariance` forms ``A`` and :func:`loss_gradient_from_logits` ``g = J^T (p - e_t)``
without the float32 cancellation of ``p_t - 1``. Flat vectors are ``(n, d)`` with ``d`` the total
number of features over all inputs; batches of directions are ``(n, m, d)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._autograd import input_gradient
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
        grads = input_gradient(self.logits, self.inputs, grad_logits, retain_graph=retain_graph)
        return flatten_features(grads)

    def batched_vjp(self, grad_logits: Tensor, retain_graph: bool = True) -> Tensor:
        """``J^T w_k`` for a stack ``grad_logits`` of shape ``(k, n, c)``; returns ``(k, n, d)``.

        Uses autograd's vectorised ``is_grads_batched`` on accelerators and falls back to a loop for
        models whose operations have no batching rule. On CPU a loop of backward passes is faster (the
        batching rules add work there: ~1.4x for 3 rows of a small CNN on one thread).
        """
        if self.logits.device.type == "cpu":
            k = grad_logits.shape[0]
            out = torch.stack([self.vjp(w, retain_graph or i < k - 1) for i, w in enumerate(grad_logits)])
            if not retain_graph:
                self.release()
            return out
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
