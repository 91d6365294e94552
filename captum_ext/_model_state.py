"""Snapshot of everything an attribution or metric promises to leave unchanged on a model, and the
one train-mode policy (:func:`check_eval_mode`) that guards it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def _module_of(forward_func: Any, depth: int = 0) -> nn.Module | None:
    if isinstance(forward_func, nn.Module):
        return forward_func
    if depth > 3:
        return None
    owner = getattr(forward_func, "__self__", None)  # a bound method such as model.forward
    if isinstance(owner, nn.Module):
        return owner
    # a Captum attribution's bound ``attribute`` (Saliency(model).attribute): its forward_func
    inner = getattr(owner, "forward_func", None)
    return None if inner is None else _module_of(inner, depth + 1)


def check_eval_mode(forward_func: Any, name: str = "forward_func") -> None:
    """Raise ``ValueError`` if ``forward_func`` is (a method of) a module with layers in training mode
    whose output depends on the mode (see :func:`has_stochastic_or_batch_layers`).

    This is the single train-mode policy of every metric, attribution and diagnostic: such a model
    would overwrite its running statistics or answer at random on every forward pass, so it is
    refused before it is touched. Plain callables cannot be inspected and are accepted.

    Args:
        forward_func: a module, a bound method of a module, a Captum attribution's bound
            ``attribute`` (its model is checked), or any callable.
        name: the argument's name in the error message.

    Raises:
        ValueError: naming the offending layers and the fix (``.eval()``).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> check_eval_mode(net.eval())
        >>> try:
        ...     check_eval_mode(net.train())
        ... except ValueError as e:
        ...     print(str(e)[:52])
        forward_func has layers in training mode whose outpu
    """
    module = _module_of(forward_func)
    if module is None:
        return
    bad = has_stochastic_or_batch_layers(module)
    if bad:
        raise ValueError(
            f"{name} has layers in training mode whose output depends on the mode ({bad[:5]}): a forward "
            "pass would overwrite normalisation running statistics or be random; call .eval() on the model "
            "first"
        )


@dataclass(frozen=True)
class ModelState:
    """Training flags, ``requires_grad`` flags, ``.grad`` fields and buffers of a module.

    ``ModelState.of(model) == ModelState.of(model)`` compares by value, so tests and callers can
    check that a call left a model exactly as it was.
    """

    training: tuple[tuple[str, bool], ...]
    requires_grad: tuple[tuple[str, bool], ...]
    grads: tuple[tuple[str, torch.Tensor | None], ...]
    buffers: tuple[tuple[str, torch.Tensor], ...]
    params: tuple[tuple[str, torch.Tensor], ...]

    @staticmethod
    def of(model: nn.Module) -> ModelState:
        return ModelState(
            training=tuple((n, m.training) for n, m in model.named_modules()),
            requires_grad=tuple((n, p.requires_grad) for n, p in model.named_parameters()),
            grads=tuple(
                (n, None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()
            ),
            buffers=tuple((n, b.detach().clone()) for n, b in model.named_buffers()),
            params=tuple((n, p.detach().clone()) for n, p in model.named_parameters()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented

        def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and bool(torch.equal(a, b))

        def pairs_equal(xs, ys) -> bool:
            return len(xs) == len(ys) and all(
                n1 == n2 and same(t1, t2) for (n1, t1), (n2, t2) in zip(xs, ys, strict=True)
            )

        return (
            self.training == other.training
            and self.requires_grad == other.requires_grad
            and pairs_equal(self.grads, other.grads)
            and pairs_equal(self.buffers, other.buffers)
            and pairs_equal(self.params, other.params)
        )

    __hash__ = None  # type: ignore[assignment]


def has_stochastic_or_batch_layers(model: nn.Module) -> list[str]:
    """Names of sub-modules in training mode whose output depends on the mode: Dropout, BatchNorm and
    every other normalisation layer that keeps running statistics (InstanceNorm with
    ``track_running_stats=True``), whose forward pass in training mode overwrites them."""

    def mode_dependent(m: nn.Module) -> bool:
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            return True
        return bool(getattr(m, "track_running_stats", False)) and getattr(m, "running_mean", None) is not None

    return [n or type(m).__name__ for n, m in model.named_modules() if m.training and mode_dependent(m)]
