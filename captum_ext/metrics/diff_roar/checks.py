"""DiffROAR's input checks: data, classes, attributions, counts (each a clear ``ValueError``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..._format import format_additional_args, select_additional_args
from ...training import as_tensors
from .._common import check_data, forward_batched, resolve_attributions

__all__ = ["ATTRIBUTION_TARGETS"]

ATTRIBUTION_TARGETS = ("prediction", "label")


def as_pair(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if data is None:
        raise ValueError(f"{name} data is required")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (tuple, list)):
        raise TypeError(
            f"{name}: diff_roar retrains models on single-tensor inputs; tuple inputs are not supported "
            "(stack or concatenate them into one tensor, or use a metric without retraining)"
        )
    try:
        x, y = as_tensors(data)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    check_data(x, f"{name} inputs")
    return x.detach(), y.detach()


def num_classes(model: Callable[..., Tensor], x: Tensor, args: tuple[Any, ...], what: str) -> int:
    device = (
        next((p.device for p in model.parameters()), x.device) if isinstance(model, nn.Module) else x.device
    )
    n = min(2, x.shape[0])
    with torch.no_grad():
        out = forward_batched(
            model, (x[:n].to(device),), select_additional_args(args, x.shape[0], torch.arange(n))
        )
    if out.dim() != 2:
        raise ValueError(f"{what} must return (batch, classes) scores, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def attributions_of(
    attributions: Any,
    forward_func: Callable[..., Tensor] | None,
    sets: dict[str, tuple[Tensor, Tensor]],
    attribution_target: str,
    args: Any,
    batch: int | None,
) -> dict[str, Tensor]:
    if callable(attributions):
        if attribution_target not in ATTRIBUTION_TARGETS:
            raise ValueError(
                f"attribution_target must be one of {ATTRIBUTION_TARGETS}, got {attribution_target!r}"
            )
        if attribution_target == "prediction" and forward_func is None:
            raise ValueError(
                "attribution_target='prediction' needs forward_func (the explained model) to predict the "
                "labels the attributions are taken at; pass it, or attribution_target='label'"
            )
        out = {}
        for name, (x, y) in sets.items():
            if attribution_target == "prediction":
                target = forward_batched(forward_func, (x,), format_additional_args(args), batch).argmax(1)  # type: ignore[arg-type]
            else:
                target = y
            out[name] = _one(attributions, x, target, args, batch, name)
        return out
    if not (isinstance(attributions, (tuple, list)) and len(attributions) == 2):
        raise TypeError(
            "attributions must be a (train_attributions, test_attributions) pair of tensors or a "
            "callable (inputs, target) -> tensor such as a Captum attribution's .attribute"
        )
    pair = dict(zip(("train", "test"), attributions, strict=True))
    for name in sets:
        if not isinstance(pair[name], Tensor):
            raise TypeError(f"{name} attributions must be a tensor, got {type(pair[name]).__name__}")
    return {name: _one(pair[name], x, None, args, batch, name) for name, (x, _) in sets.items()}


def _one(
    attributions: Any, x: Tensor, target: Tensor | None, args: Any, batch: int | None, name: str
) -> Tensor:
    """One set's attributions through the metrics' single path (:func:`resolve_attributions`)."""
    try:
        (out,) = resolve_attributions(
            attributions, x, target, additional_forward_args=args, max_examples_per_batch=batch
        )
    except ValueError as err:
        raise ValueError(f"{name} {err}") from err
    return out.detach()


def check_counts(fracs: tuple[float, ...], counts: tuple[int, ...], n_units: int) -> None:
    empty = [f for f, k in zip(fracs, counts, strict=True) if k == 0]
    if empty:
        raise ValueError(
            f"fractions {empty} keep 0 of the {n_units} units per example (round half up): the cells "
            f"would score empty inputs; use fractions >= {0.5 / n_units:.3g}"
        )
