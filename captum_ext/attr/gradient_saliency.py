"""Differentiable gradient saliency ``|d f_target / dx|`` (or ``|x * d f_target / dx|``).

The attribution behind :func:`~captum_ext.metrics.attribution_attack`: unlike Captum's
``Saliency`` it can keep the graph (``create_graph=True``), so that an attack can differentiate the
saliency map itself with respect to the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._format import run_forward

__all__ = ["gradient_saliency"]


def gradient_saliency(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    times_input: bool = False,
    create_graph: bool = False,
    additional_args: tuple[Any, ...] = (),
) -> Tensor:
    """``|d f_target / dx|`` (or ``|x * d f_target / dx|``), differentiable when ``create_graph``.

    ``x`` must require grad. Uses ``torch.autograd.grad`` only, so no ``.grad`` field changes.

    Args:
        model: a classifier returning ``(batch, classes)`` scores.
        x: inputs that require grad, batch first.
        target: ``(N,)`` classes.
        times_input: multiply the gradient by the input (gradient x input).
        create_graph: keep the graph so that the map can be differentiated again.
        additional_args: extra positional arguments of ``model``.

    Returns:
        A tensor shaped like ``x``.

    Examples:
        >>> net = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        >>> gradient_saliency(net, torch.ones(1, 2, requires_grad=True), torch.tensor([0]))
        tensor([[1., 2.]])
    """
    out = run_forward(model, (x,), additional_args)
    sel = out.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(sel, x, create_graph=create_graph)
    return (g * x).abs() if times_input else g.abs()
