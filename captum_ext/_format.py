"""Small input/target formatting helpers shared by the package.

Captum keeps its own helpers in private modules (``captum._utils``) that are renamed between releases,
so we keep the few we need here, following the same public conventions:

* ``inputs`` is a tensor or a tuple of tensors, batch first;
* ``target`` is ``None``, an int, a list of ints, or a tensor (0-d, or 1-d with one entry per example
  or a single entry);
* ``additional_forward_args`` is ``None``, one object, or a tuple of objects appended to the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

TensorOrTuple = Tensor | tuple[Tensor, ...]
TargetType = int | Sequence[int] | Tensor | None


def format_inputs(inputs: TensorOrTuple) -> tuple[tuple[Tensor, ...], bool]:
    """Return ``(inputs_as_tuple, was_tuple)`` and check that every input is a batch-first tensor."""
    is_tuple = isinstance(inputs, tuple)
    tup = inputs if is_tuple else (inputs,)
    if len(tup) == 0:
        raise ValueError("inputs must be a tensor or a non-empty tuple of tensors")
    for i, t in enumerate(tup):
        if not isinstance(t, Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"inputs[{i}] must have a batch dimension, got a 0-d tensor")
    n = tup[0].shape[0]
    if any(t.shape[0] != n for t in tup):
        raise ValueError(f"all inputs must share the batch size, got {[int(t.shape[0]) for t in tup]}")
    return tup, is_tuple


def format_output(is_tuple: bool, outputs: tuple[Tensor, ...]) -> TensorOrTuple:
    """Undo :func:`format_inputs`: a tuple in gives a tuple out, a tensor in gives a tensor out."""
    return outputs if is_tuple else outputs[0]


def format_additional_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """Captum's convention: ``None`` -> ``()``, a tuple stays, anything else is wrapped."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def repeat_additional_args(args: tuple[Any, ...], n: int, repeats: int) -> tuple[Any, ...]:
    """Repeat batch-shaped tensors in ``args`` (first dim ``n``) ``repeats`` times along dim 0.

    Non-tensor arguments and tensors whose first dimension is not the batch are passed unchanged,
    as Captum does when it expands inputs.
    """
    if repeats == 1:
        return args
    return tuple(
        a.repeat_interleave(repeats, dim=0)
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n
        else a
        for a in args
    )


def select_additional_args(args: tuple[Any, ...], n: int, index: Tensor) -> tuple[Any, ...]:
    """Take the rows ``index`` of batch-shaped tensors in ``args`` (first dim ``n``)."""
    return tuple(
        a.index_select(0, index.to(a.device))
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n
        else a
        for a in args
    )


def run_forward(
    forward_func: Callable[..., Tensor], inputs: tuple[Tensor, ...], args: tuple[Any, ...] = ()
) -> Tensor:
    """Call ``forward_func(*inputs, *args)`` and check it returns ``(batch, classes)`` scores."""
    out = forward_func(*inputs, *args)
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func must return a tensor, got {type(out).__name__}")
    n = inputs[0].shape[0]
    if out.dim() != 2 or out.shape[0] != n:
        raise ValueError(
            "forward_func must return class scores shaped (batch, classes); "
            f"got {tuple(out.shape)} for a batch of {n}"
        )
    return out


def expand_target(target: TargetType, n: int, num_classes: int, device: torch.device) -> Tensor | None:
    """Turn any Captum-style classification ``target`` into a ``LongTensor`` of shape ``(n,)``.

    Returns ``None`` when ``target`` is ``None`` (the caller decides the default, usually the
    predicted class). Raises ``ValueError`` for a wrong length or an index outside ``[0, classes)``.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or a tensor, not a bool")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"target tensor must hold integers, got dtype {target.dtype}")
        flat = target.reshape(-1).to(device=device, dtype=torch.long)
        if target.dim() > 1 and not (target.dim() == 2 and target.shape[1] == 1):
            raise ValueError(
                f"target tensor must be 0-d or 1-d for a classifier, got shape {tuple(target.shape)}"
            )
        if flat.numel() == 1:
            t = flat.expand(n).clone()
        elif flat.numel() == n:
            t = flat
        else:
            raise ValueError(f"target has {flat.numel()} entries but the batch has {n} examples")
    elif isinstance(target, Sequence) and not isinstance(target, str):
        items = list(target)
        if any(isinstance(x, tuple) for x in items):
            raise ValueError(
                "tuple targets index multi-dimensional outputs; captum_ext methods explain "
                "classifiers whose output is (batch, classes), so give one class index per example"
            )
        if len(items) != n:
            raise ValueError(f"target has {len(items)} entries but the batch has {n} examples")
        t = torch.as_tensor([int(x) for x in items], dtype=torch.long, device=device)
    else:
        raise TypeError(f"unsupported target type {type(target).__name__}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"target indices must lie in [0, {num_classes}) for a model with {num_classes} "
            f"classes; got values in [{int(t.min())}, {int(t.max())}]"
        )
    return t
