"""Resolve an attribution given as tensors or as a callable into tensors (batched plumbing)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._format import format_additional_args, select_additional_args

AttributionLike = Tensor | tuple[Tensor, ...] | Callable[..., Any]


def _takes_target_keyword(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "target" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def call_attribution(
    fn: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    is_tuple: bool,
    target: Tensor | None,
    batch_size: int,
    additional_forward_args: Any = None,
) -> tuple[Tensor, ...]:
    """Run ``fn(inputs, target=...)`` over mini-batches and concatenate the (detached) results.

    ``fn`` is a Captum ``Attribution.attribute`` method or any ``(inputs, target) -> tensor``
    function. It is called with ``target`` as a keyword when its signature has a ``target``
    parameter (Captum's methods do, and their second positional parameter is not always the target),
    positionally otherwise. ``additional_forward_args`` are passed as a keyword when given.

    Returns:
        One attribution tensor per input, shaped like it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = inputs[0].shape[0]
    by_keyword = _takes_target_keyword(fn)
    extra = format_additional_args(additional_forward_args)
    chunks: list[tuple[Tensor, ...]] = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        # fresh leaves that require grad (as gradient methods need; avoids Captum's warning)
        xb = tuple(
            x[start : start + batch_size].detach().requires_grad_(x.is_floating_point()) for x in inputs
        )
        batch_in = xb if is_tuple else xb[0]
        tb = None if target is None else target[start : start + batch_size]
        kwargs: dict[str, Any] = {}
        if extra:
            kwargs["additional_forward_args"] = select_additional_args(extra, n, idx)
        with torch.enable_grad():
            out = fn(batch_in, target=tb, **kwargs) if by_keyword else fn(batch_in, tb, **kwargs)
        out_t = out if isinstance(out, tuple) else (out,)
        if len(out_t) != len(inputs) or not all(isinstance(a, Tensor) for a in out_t):
            raise ValueError(
                f"the attribution callable returned {len(out_t)} item(s) for {len(inputs)} input(s)"
            )
        chunks.append(tuple(a.detach() for a in out_t))
    return tuple(torch.cat([c[i] for c in chunks]) for i in range(len(inputs)))


def check_like(attributions: tuple[Tensor, ...], inputs: tuple[Tensor, ...], what: str) -> None:
    """Raise ``ValueError`` unless every attribution has the shape of its input."""
    if len(attributions) != len(inputs):
        raise ValueError(f"{what}: got {len(attributions)} attribution tensor(s) for {len(inputs)} input(s)")
    for i, (a, x) in enumerate(zip(attributions, inputs, strict=True)):
        if not isinstance(a, Tensor):
            raise TypeError(f"{what}: attribution {i} must be a tensor, got {type(a).__name__}")
        if a.shape != x.shape:
            raise ValueError(
                f"{what}: attribution {i} has shape {tuple(a.shape)} but its input has shape "
                f"{tuple(x.shape)}; attributions must be shaped like the inputs"
            )
