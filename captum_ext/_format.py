"""Small input/target formatting helpers shared by the package.

Captum keeps its own helpers in private modules (``captum._utils``) that are renamed between releases,
so we keep the few we need here, following the same public conventions:

* ``inputs`` is a tensor or a tuple of tensors, batch first;
* ``target`` is anything Captum accepts (``None``, an int, a tuple for multi-dimensional outputs, a
  tensor, a list of ints or of tuples), parsed by :func:`format_target` alone (:func:`expand_target`
  is its classifier case);
* ``additional_forward_args`` is ``None``, one object, or a tuple of objects appended to the inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

TensorOrTuple = Tensor | tuple[Tensor, ...]
#: Captum's target forms: None, an int, a tuple (multi-dimensional output), a tensor, a list of ints
#: or a list of tuples (one entry per example).
TargetLike = int | tuple[int, ...] | Tensor | Sequence[int] | Sequence[tuple[int, ...]] | None


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


def expand_target(target: TargetLike, n: int, num_classes: int, device: torch.device) -> Tensor | None:
    """Any Captum ``target`` of a classifier (output ``(n, num_classes)``) as a ``LongTensor`` ``(n,)``.

    The classifier case of :func:`format_target` (the one parser of targets in the package) on
    ``device``. Returns ``None`` when ``target`` is ``None`` (the caller decides the default,
    usually the predicted class).

    Examples:
        >>> expand_target([2, 0], 2, 3, torch.device("cpu")).tolist()
        [2, 0]
        >>> expand_target((1,), 2, 3, torch.device("cpu")).tolist()
        [1, 1]
    """
    t = format_target(target, n, (n, num_classes))
    return None if t is None else t[:, 0].to(device)


def format_target(
    target: TargetLike, n: int, output_shape: Sequence[int], name: str = "target"
) -> Tensor | None:
    """Any Captum ``target`` as a ``(N, D)`` LongTensor of output indices, range-checked.

    ``D = len(output_shape) - 1`` is the number of non-batch output dimensions (1 for a classifier's
    ``(N, classes)`` scores). Accepted forms, as in Captum: ``None`` (returned as ``None``), an int
    (``D == 1``), a tuple of ``D`` ints, a tensor (0-d, ``(N,)``, ``(1,)``, or ``(N, D)`` /
    ``(D,)`` for multi-dimensional outputs), a list of ``N`` ints, or a list of ``N`` tuples.

    Args:
        target: the target.
        n: the batch size.
        output_shape: the model's output shape (batch first; only the non-batch sizes are used).
        name: the argument's name in error messages.

    Returns:
        ``None`` or a LongTensor ``(n, D)`` on the CPU.

    Raises:
        TypeError: for bools, floats and unknown types.
        ValueError: wrong length, wrong tuple size, or an index outside the output's range.

    Examples:
        >>> format_target([2, 0], 2, (2, 3)).tolist()
        [[2], [0]]
        >>> format_target((1, 4), 2, (2, 3, 5)).tolist()
        [[1, 4], [1, 4]]
    """
    if target is None:
        return None
    dims = tuple(int(s) for s in output_shape[1:])
    d = len(dims)
    if d == 0:
        raise ValueError(f"{name}: the model's output has no dimension besides the batch; use target=None")

    def bad_type(obj: Any) -> TypeError:
        return TypeError(
            f"{name} must be an int, a tuple of ints, a list of ints or tuples, or an integer tensor; "
            f"got {type(obj).__name__}"
        )

    def as_int(v: Any) -> int:
        if (
            isinstance(v, bool)
            or not isinstance(v, (numbers.Integral, Tensor))
            or (isinstance(v, Tensor) and v.numel() != 1)
        ):
            raise bad_type(v)
        if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex()):
            raise bad_type(v)
        return int(v)

    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{name} tensor must hold integers, got dtype {target.dtype}")
        t = target.detach().to("cpu", torch.long)
        if t.numel() == 1 and d == 1:
            t = t.reshape(1, 1).expand(n, 1)
        elif t.dim() == 1 and d == 1 and t.shape[0] == n:
            t = t.reshape(n, 1)
        elif t.dim() == 2 and d == 1 and t.shape == (n, 1):
            pass
        elif t.dim() == 1 and d > 1 and t.shape[0] == d:
            t = t.reshape(1, d).expand(n, d)
        elif t.dim() == 2 and t.shape == (n, d):
            pass
        else:
            raise ValueError(
                f"{name} tensor of shape {tuple(target.shape)} does not fit a batch of {n} examples and an "
                f"output of shape {tuple(output_shape)}: give one index per example ({n},)"
                + (f" or an (N, {d}) tensor" if d > 1 else "")
            )
    elif isinstance(target, tuple):
        if len(target) != d:
            raise ValueError(
                f"{name} tuple {target} has {len(target)} indices, the output has {d} dimension(s)"
            )
        t = torch.tensor([as_int(v) for v in target], dtype=torch.long).reshape(1, d).expand(n, d)
    elif isinstance(target, (numbers.Integral, bool)):
        if d != 1:
            raise ValueError(f"{name} is an int but the output has {d} non-batch dimensions: give a tuple")
        t = torch.full((n, 1), as_int(target), dtype=torch.long)
    elif isinstance(target, Sequence) and not isinstance(target, str):
        items = list(target)
        if len(items) != n:
            raise ValueError(f"{name} has {len(items)} entries but the batch has {n} examples")
        rows = []
        for item in items:
            row = tuple(item) if isinstance(item, (tuple, list)) else (item,)
            if len(row) != d:
                raise ValueError(
                    f"{name} entry {item!r} has {len(row)} indices, the output has {d} dimension(s)"
                )
            rows.append([as_int(v) for v in row])
        t = torch.tensor(rows, dtype=torch.long).reshape(n, d)
    else:
        raise bad_type(target)
    t = t.contiguous()
    if n:
        upper = torch.tensor(dims, dtype=torch.long)
        out_of_range = (t < 0) | (t >= upper)
        if out_of_range.any():
            row, col = (int(i) for i in out_of_range.nonzero()[0])
            raise ValueError(
                f"{name} index {int(t[row, col])} (example {row}) is out of range for an output of shape "
                f"{tuple(output_shape)}: indices must lie in [0, {dims[col]})"
                + (f" (a classifier with {dims[0]} classes)" if d == 1 else "")
            )
    return t
