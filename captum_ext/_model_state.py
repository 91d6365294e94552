"""Snapshot of everything an attribution or metric promises to leave unchanged on a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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
