"""Differentiable gradient saliency ``|d f_target / dx|`` (or ``|x * d f_target / dx|``).

The attribution behind :func:`~captum_ext.metrics.attribution_attack`: unlike Captum's
``Saliency`` it can keep the graph (``create_graph=True``), so that an attack can differentiate the
saliency map itself with respect to the input.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._autograd import input_gradient, penalty_gradient
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

    ``x`` must require grad. Gradients with respect to ``x`` only, so no ``.grad`` field changes.

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
        >>> import torch
        >>> net = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        >>> gradient_saliency(net, torch.ones(1, 2, requires_grad=True), torch.tensor([0]))
        tensor([[1., 2.]])
    """
    out = run_forward(model, (x,), additional_args)
    sel = out.gather(1, target.view(-1, 1)).sum()
    if create_graph:  # refuses a gradient that could not be differentiated again
        (g,) = penalty_gradient(sel, (x,), "gradient_saliency(create_graph=True)")
    else:
        (g,) = input_gradient(sel, (x,))
    return (g * x).abs() if times_input else g.abs()
