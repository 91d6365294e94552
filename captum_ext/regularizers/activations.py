"""Swap every ReLU of a model for Softplus(β) on a deep copy.

Score matching needs a non-zero input Hessian, which a piecewise-linear ReLU network does not have
(it is zero almost everywhere). Srinivas & Fleuret use Softplus with β = 10 in every model (Sec. 5),
and their code swaps every ReLU module of a standard architecture for it; this helper does the same.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

__all__ = ["relu_to_softplus"]


def relu_to_softplus(model: nn.Module, beta: float = 10.0, threshold: float = 20.0) -> nn.Module:
    """Return a deep copy of ``model`` with every :class:`torch.nn.ReLU` module replaced by Softplus.

    The original model is not modified (parameters, buffers, modes and ``.grad`` stay as they were);
    the copy keeps the original's training flags. ``Softplus(β)(x) = log(1 + exp(βx)) / β`` tends to
    ReLU as β grows.

    Only ReLU *modules* can be swapped: a ``torch.nn.functional.relu`` call inside a ``forward`` is
    invisible from outside. A :class:`UserWarning` is raised when no ReLU module is found.

    Args:
        model: any module.
        beta: Softplus β (default ``10``, Srinivas & Fleuret Sec. 5 and their code).
        threshold: Softplus reverts to the identity above ``β·x > threshold`` (PyTorch's default 20).

    Returns:
        The modified copy.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> smooth = relu_to_softplus(net)
        >>> type(smooth[1]).__name__, type(net[1]).__name__
        ('Softplus', 'ReLU')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if isinstance(model, nn.ReLU):
        out = nn.Softplus(beta=beta, threshold=threshold)
        out.train(model.training)
        return out
    clone = copy.deepcopy(model)
    swapped = 0
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                new = nn.Softplus(beta=beta, threshold=threshold)
                new.training = child.training
                setattr(parent, name, new)
                swapped += 1
    if swapped == 0:
        warnings.warn(
            "relu_to_softplus found no nn.ReLU module to replace; functional relu calls inside "
            "forward() cannot be swapped",
            UserWarning,
            stacklevel=2,
        )
    return clone
