"""Plumbing shared by every metric: validation, the train-mode policy, targets, results.

Every metric of :mod:`captum_ext.metrics` speaks Captum's dialect (``forward_func, inputs,
attributions, *, target=None, additional_forward_args=None, baselines=..., max_examples_per_batch=None``)
and validates its input through the helpers here, so that the same mistake gets the same clear error
everywhere:

* :func:`check_eval_mode` -- the one train-mode policy: a model with Dropout or a normalisation layer
  with running statistics (BatchNorm, InstanceNorm with ``track_running_stats``) in training mode is
  refused with a ``ValueError`` *before* it is called (a forward pass would change its running
  statistics or be random), as CASO does;
* :func:`format_target` / :func:`check_labels` -- ``target`` in every form Captum accepts (int,
  tuple, list of ints, list of tuples, tensor) with range checks against the model's output shape;
* :func:`check_data` (:func:`check_finite`, :func:`check_not_empty`), :func:`check_batch_size` -- the
  one input check: NaN / infinite, empty and 1-D inputs are refused with the fix in the message;
* :class:`MetricResult` -- the base of every result: a frozen dataclass with ``to_dict()`` (JSON-able)
  and ``plot(ax=None)``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._format import (
    TargetLike,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    format_target,
    run_forward,
    select_additional_args,
)
from .._model_state import check_eval_mode
from ._attribution import call_attribution, check_like
from ._validate import OPTIONAL_POSITIVE_INT, OneOf, validate

__all__ = [
    "MetricResult",
    "TargetLike",
    "check_batch_size",
    "check_data",
    "check_model_outputs",
    "class_probabilities",
    "check_eval_mode",
    "check_finite",
    "check_labels",
    "check_not_empty",
    "compute_attributions",
    "explainer_for",
    "forward_batched",
    "format_target",
    "resolve_attributions",
    "resolve_target",
    "select_output",
]


# ------------------------------------------------------------------------------------------------
# simple validators


def check_batch_size(value: int | None, name: str = "max_examples_per_batch") -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or a positive int.

    Examples:
        >>> check_batch_size(None); check_batch_size(4)
    """
    validate(**{name: (value, OPTIONAL_POSITIVE_INT)})


def check_not_empty(inputs: tuple[Tensor, ...], name: str = "inputs") -> int:
    """Raise ``ValueError`` for a batch of zero examples or tensors without feature dimensions;
    returns the batch size.

    Examples:
        >>> check_not_empty((torch.zeros(3, 2),))
        3
    """
    n = int(inputs[0].shape[0])
    if n == 0:
        raise ValueError(f"{name} are empty: need at least one example")
    if any(x.dim() < 2 for x in inputs):
        raise ValueError(
            f"{name} must be shaped (N, ...) with at least one feature dimension, got shape "
            f"{tuple(next(x for x in inputs if x.dim() < 2).shape)}: for one example of shape (D,) "
            "pass x.unsqueeze(0), for N scalar features x.unsqueeze(1)"
        )
    if any(x[0].numel() == 0 for x in inputs):
        raise ValueError(f"{name} have no features (a zero-sized dimension)")
    return n


def check_data(tensors: Tensor | tuple[Tensor, ...], name: str = "inputs") -> int:
    """The one input check of every metric: a batch of at least one example, shaped ``(N, ...)``
    with a feature dimension, finite; returns the batch size.

    Examples:
        >>> check_data(torch.zeros(3, 2))
        3
        >>> try:
        ...     check_data(torch.zeros(3))
        ... except ValueError as e:
        ...     print(str(e)[:60])
        inputs must be shaped (N, ...) with at least one feature dim
    """
    tup = tensors if isinstance(tensors, tuple) else (tensors,)
    n = check_not_empty(tup, name)
    check_finite(tup, name)
    return n


def check_finite(tensors: Tensor | tuple[Tensor, ...], name: str) -> None:
    """Raise ``ValueError`` when any tensor holds NaN or infinite values.

    Examples:
        >>> try:
        ...     check_finite(torch.tensor([1.0, float("nan")]), "attributions")
        ... except ValueError as e:
        ...     print(e)
        attributions contain NaN or infinite values (1 of 2 entries)
    """
    for t in tensors if isinstance(tensors, tuple) else (tensors,):
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{name} contain NaN or infinite values ({bad} of {t.numel()} entries)")


# ------------------------------------------------------------------------------------------------
# model outputs

#: what a classifier's forward returns: scores to be softmaxed, or class probabilities already
MODEL_OUTPUTS = ("logits", "probabilities")


def check_model_outputs(out: Tensor, model_outputs: str, name: str = "forward_func") -> None:
    """The one probability policy: a model declared to return logits (the default) whose outputs are
    rows of non-negative numbers summing to 1 is refused, so that probabilities are never softmaxed
    twice; ``model_outputs="probabilities"`` declares them.

    Examples:
        >>> check_model_outputs(torch.tensor([[2.0, -1.0]]), "logits")
        >>> try:
        ...     check_model_outputs(torch.tensor([[0.25, 0.75]]), "logits")
        ... except ValueError as e:
        ...     print(str(e)[:45])
        forward_func returns probabilities (each row
    """
    validate(model_outputs=(model_outputs, OneOf(MODEL_OUTPUTS)))
    if model_outputs == "logits" and out.dim() == 2 and out.shape[1] > 1 and out.numel():
        rows = out.detach().to(torch.float64)
        if bool((rows >= 0).all()) and bool(((rows.sum(dim=1) - 1.0).abs() <= 1e-5).all()):
            raise ValueError(
                f"{name} returns probabilities (each row is >= 0 and sums to 1): softmaxing them again "
                "would flatten every score; pass model_outputs='probabilities' (or return logits)"
            )


def class_probabilities(out: Tensor, model_outputs: str) -> Tensor:
    """Softmax of logits, or the probabilities a model returns (see :func:`check_model_outputs`).

    Examples:
        >>> class_probabilities(torch.tensor([[0.25, 0.75]]), "probabilities")
        tensor([[0.2500, 0.7500]])
    """
    return out if model_outputs == "probabilities" else torch.softmax(out, dim=1)


# ------------------------------------------------------------------------------------------------
# targets


def check_labels(labels: Any, n: int, num_classes: int, name: str = "target") -> Tensor:
    """Class labels of a classifier as a ``(N,)`` LongTensor in ``[0, num_classes)``; ``None`` is refused.

    Args:
        labels: an int, a list of ints or an integer tensor (``(N,)`` or one value).
        n: the batch size.
        num_classes: number of classes of the model's output.
        name: the argument's name in error messages.

    Returns:
        A LongTensor ``(n,)`` on the CPU.

    Examples:
        >>> check_labels(torch.tensor([0, 2]), 2, 3)
        tensor([0, 2])
        >>> try:
        ...     check_labels([0, 3], 2, 3, "y_test")
        ... except ValueError as e:
        ...     print(str(e)[:40])
        y_test index 3 (example 1) is out of ran
    """
    if labels is None:
        raise ValueError(f"{name} is required (class labels, one per example)")
    return format_target(labels, n, (n, num_classes), name)[:, 0]  # type: ignore[index]


def select_output(out: Tensor, target: Tensor) -> Tensor:
    """``out[i, target[i]]`` for a ``(N, D)`` target from :func:`format_target`: shape ``(N,)``.

    Examples:
        >>> select_output(torch.arange(6.0).reshape(2, 3), torch.tensor([[2], [0]]))
        tensor([2., 3.])
    """
    n = out.shape[0]
    flat = out.reshape(n, -1)
    index = torch.zeros(n, dtype=torch.long)
    for size, col in zip(out.shape[1:], target.unbind(1), strict=True):
        index = index * int(size) + col
    return flat.gather(1, index.to(out.device).view(n, 1))[:, 0]


# ------------------------------------------------------------------------------------------------
# batched forward / attribution


def forward_batched(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    args: tuple[Any, ...] = (),
    max_examples_per_batch: int | None = None,
) -> Tensor:
    """``forward_func(*inputs, *args)`` in batches (batch-shaped extra args are split too), no grad."""
    n = inputs[0].shape[0]
    bs = n if max_examples_per_batch is None else max_examples_per_batch
    outs = []
    with torch.no_grad():
        for start in range(0, n, max(bs, 1)):
            idx = torch.arange(start, min(start + bs, n), device=inputs[0].device)
            batch = tuple(x[idx] for x in inputs)
            outs.append(run_forward(forward_func, batch, select_additional_args(args, n, idx)))
    return torch.cat(outs, dim=0)


def resolve_target(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    target: TargetLike,
    args: tuple[Any, ...] = (),
    max_examples_per_batch: int | None = None,
) -> Tensor:
    """``target`` as a ``(N,)`` LongTensor of classes; ``None`` becomes the predicted classes."""
    n = inputs[0].shape[0]
    out = forward_batched(forward_func, inputs, args, max_examples_per_batch)
    if target is None:
        return out.argmax(dim=1)
    return check_labels(target, n, out.shape[1]).to(out.device)


def explainer_for(explainer: Any, model: nn.Module) -> Callable[..., Any]:
    """Turn ``explainer`` into an attribution function for ``model``.

    ``explainer`` is a Captum ``Attribution`` class (``Saliency``, ``IntegratedGradients``, ...;
    ``cls(model).attribute`` is used) or a factory ``model -> attribute_fn`` where
    ``attribute_fn(inputs, target=..., **kwargs)`` returns attributions shaped like the inputs
    (e.g. ``lambda m: NoiseTunnel(Saliency(m)).attribute``).
    """
    if isinstance(explainer, type):
        from captum.attr import Attribution

        if not issubclass(explainer, Attribution):
            raise TypeError(
                f"explainer class {explainer.__name__} is not a captum.attr.Attribution; pass a "
                "Captum attribution class or a factory `lambda model: attribute_fn`"
            )
        return explainer(model).attribute
    if not callable(explainer):
        raise TypeError(
            "explainer must be a Captum Attribution class or a callable `model -> attribute_fn`, "
            f"got {type(explainer).__name__}"
        )
    fn = explainer(model)
    if not callable(fn):
        raise TypeError(
            "explainer(model) must return an attribution function `(inputs, target) -> tensor`, "
            f"got {type(fn).__name__}"
        )
    return fn


def compute_attributions(
    attribute_fn: Callable[..., Any],
    inputs: TensorOrTuple,
    target: Tensor | None,
    *,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    max_examples_per_batch: int | None = None,
) -> TensorOrTuple:
    """Call ``attribute_fn(inputs, target=..., **kwargs)`` in batches and check the output.

    Args:
        attribute_fn: a Captum ``attribute`` method or any ``(inputs, target) -> attributions``.
        inputs: tensor or tuple of tensors, batch first.
        target: ``(N,)`` classes (split with the batches) or ``None``.
        additional_forward_args: passed as ``additional_forward_args=`` when not ``None``.
        attribute_kwargs: extra keyword arguments for ``attribute_fn`` (e.g. ``nt_samples``).
        max_examples_per_batch: examples per call (``None``: all at once).

    Returns:
        Detached attributions shaped like ``inputs`` (a tuple for tuple inputs).
    """
    check_batch_size(max_examples_per_batch)
    tup, is_tuple = format_inputs(inputs)
    n = tup[0].shape[0]
    fn = functools.partial(attribute_fn, **attribute_kwargs) if attribute_kwargs else attribute_fn
    bs = n if max_examples_per_batch is None else max_examples_per_batch
    out = call_attribution(fn, tup, is_tuple, target, bs, additional_forward_args)
    check_like(out, tup, "attributions")
    return out if is_tuple else out[0]


def resolve_attributions(
    attributions: Any,
    inputs: TensorOrTuple,
    target: Tensor | None,
    *,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    max_examples_per_batch: int | None = None,
) -> tuple[Tensor, ...]:
    """Attributions given as tensors or as an attribution callable, as a checked tuple of tensors.

    A callable is run with :func:`compute_attributions` (in batches, with ``target``); tensors are
    taken as they are. Either way every tensor must have its input's shape and be finite.

    Returns:
        One detached-or-given tensor per input.

    Raises:
        TypeError: neither tensors nor a callable.
        ValueError: shapes unlike the inputs, NaN or infinite values.
    """
    tup, _ = format_inputs(inputs)
    if isinstance(attributions, (Tensor, tuple)):
        attrs = attributions
    elif callable(attributions):
        attrs = compute_attributions(
            attributions,
            inputs,
            target,
            additional_forward_args=additional_forward_args,
            attribute_kwargs=attribute_kwargs,
            max_examples_per_batch=max_examples_per_batch,
        )
    else:
        raise TypeError(
            "attributions must be a tensor, a tuple of tensors or a function, got "
            f"{type(attributions).__name__}"
        )
    attrs_t = attrs if isinstance(attrs, tuple) else (attrs,)
    check_like(attrs_t, tup, "attributions")
    check_finite(attrs_t, "attributions")
    return attrs_t


def format_forward_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """Captum's ``additional_forward_args`` as a tuple (re-exported for the metric modules)."""
    return format_additional_args(additional_forward_args)


# ------------------------------------------------------------------------------------------------
# results


def _jsonable(value: Any) -> Any:
    if isinstance(value, MetricResult):
        return value.to_dict()
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON")


def _short(value: Any, limit: int = 6) -> str:
    """A compact text for one field of a result."""
    if isinstance(value, Tensor):
        if value.numel() <= limit:
            return str(
                [
                    round(v, 4) if isinstance(v, float) else v
                    for v in value.detach().cpu().reshape(-1).tolist()
                ]
            )
        return f"<tensor {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}>"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        if len(value) <= limit:
            inner = ", ".join(_short(v, limit) for v in value)
            return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
        return f"<{len(value)} items>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v, limit)}" for k, v in value.items()) + "}"
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class MetricResult(abc.ABC):
    """Base of every metric result: subclasses are frozen dataclasses that implement ``plot``.

    ``to_dict()`` returns a JSON-able dict of the fields (tensors become nested lists; fields whose
    ``metadata`` has ``{"to_dict": False}`` -- models, raw attributions -- are left out).
    ``plot(ax=None, ...)`` draws the result on a matplotlib ``Axes`` (a new figure when ``None``;
    matplotlib is imported only then) and returns the Axes.

    Examples:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Toy(MetricResult):
        ...     values: Tensor
        ...
        ...     def plot(self, ax=None, **kwargs):
        ...         ax = self._axes(ax)
        ...         ax.plot(self.values.tolist(), **kwargs)
        ...         return ax
        >>> Toy(torch.tensor([0.5, 1.0])).to_dict()
        {'values': [0.5, 1.0]}
    """

    def __repr__(self) -> str:
        """One line: scalars and short values as they are, tensors and long sequences summarised
        (a result over thousands of examples does not print thousands of numbers)."""
        fields = [f for f in dataclasses.fields(self) if f.repr] if dataclasses.is_dataclass(self) else []
        body = ", ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in fields)
        return f"{type(self).__name__}({body})"

    def to_dict(self) -> dict[str, Any]:
        """The result's fields as a JSON-able dict (``json.dumps`` accepts it)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a dataclass")
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("to_dict", True)
        }

    @abc.abstractmethod
    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Draw the result on ``ax`` (a new figure when ``None``); returns the Axes."""

    @staticmethod
    def _axes(ax: Any, figsize: tuple[float, float] = (5.0, 3.5)) -> Any:
        """``ax`` or the Axes of a new figure (matplotlib imported lazily)."""
        if ax is not None:
            return ax
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
        return ax


#: ``dataclasses.field`` metadata that keeps a field out of ``to_dict()``.
NOT_IN_DICT = {"to_dict": False}
