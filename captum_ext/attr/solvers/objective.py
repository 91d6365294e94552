"""The CASO problem itself: its objective, its smooth part and the l1 prox (pure tensor maths).

Every routine works on a batch of independent problems laid out as ``(n, m, d)``: ``n`` examples,
``m`` problems per example (several ``lambda1`` values sharing one Hessian), ``d`` features.
Per-problem scalars are ``(n, m, 1)`` tensors or anything that broadcasts to it. The solvers minimise

    min_D  F(D) = s(D) + lambda1 * ||D||_1,      s(D) = -g.D - 1/2 D.H D + lambda2 * ||D||^2

the negated ``g.D + 1/2 D.H D - lambda1 ||D||_1 - lambda2 ||D||^2`` that CASO maximises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: a batched Hessian-vector product ``(n, m, d) -> (n, m, d)``, linear in its argument
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
