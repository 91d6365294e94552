"""Fidelity of attributions: AOPC under most-relevant-first removal (Samek et al., 2016).

* :func:`aopc` — remove features in order of decreasing relevance (MoRF), ``features_per_step`` at
  a time, and average the drop of the target-class output over the first ``L`` steps:

      AOPC_L = 1 / (L + 1) * sum_{l=0}^{L} [ f(x^(0)) - f(x^(l)) ]

  reported for every ``L`` in ``steps`` (Gong et al. report L = 20, 50, 100);
* :func:`relative_fidelity_drop` — the relative drop (%) of the mean AOPC of a post-processed
  attribution (e.g. sparsified gradient) against its base method (e.g. the plain gradient),
  Table 5 of Gong et al.'s supplement: ``100 * (AOPC_base - AOPC_processed) / AOPC_base``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from captum_ext._format import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    select_additional_args,
)
from captum_ext.metrics._common import (
    check_batch_size,
    check_eval_mode,
    compute_attributions,
    resolve_target,
)
from captum_ext.metrics.similarity import AttrLike

__all__ = ["AOPCResult", "FidelityDrop", "aopc", "relative_fidelity_drop"]

AttributionsLike = AttrLike | Callable[..., AttrLike]
BaselineLike = float | str | Tensor | tuple[Any, ...]


@dataclass
class AOPCResult:
    """AOPC under MoRF removal.

    Attributes:
        steps: the ``L`` values.
        aopc: ``(len(steps), N)`` per-example AOPC at each ``L``.
        scores: ``(max(steps) + 1, N)`` target output ``f(x^(l))`` after ``l`` removal steps.
        target: ``(N,)`` explained classes.
    """

    steps: tuple[int, ...]
    aopc: Tensor
    scores: Tensor = field(repr=False)
    target: Tensor = field(repr=False)

    def mean(self) -> Tensor:
        """Mean AOPC over examples at each ``L``, shape ``(len(steps),)``."""
        return self.aopc.mean(dim=1)

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        """Plot the mean output drop ``f(x^(0)) - f(x^(l))`` against ``l``; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 3.2))
        drop = (self.scores[:1] - self.scores).mean(dim=1).cpu().numpy()
        ax.plot(range(len(drop)), drop, label=label)
        ax.set_xlabel("removal steps (most relevant first)")
        ax.set_ylabel("mean output drop")
        if label is not None:
            ax.legend(fontsize="small")
        return ax


def _steps(steps: int | Sequence[int]) -> tuple[int, ...]:
    vals = (steps,) if isinstance(steps, int) else tuple(steps)
    if not vals or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in vals):
        raise ValueError(f"steps must be a non-negative int or a non-empty sequence of them, got {steps!r}")
    return vals


def _baselines(baseline: BaselineLike, tup: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """One tensor broadcastable to each input."""
    if isinstance(baseline, tuple):
        if len(baseline) != len(tup):
            raise ValueError(f"baseline tuple has {len(baseline)} entries for {len(tup)} inputs")
        return tuple(_baselines(b, (x,))[0] for b, x in zip(baseline, tup, strict=True))
    out = []
    for x in tup:
        n = x.shape[0]
        if isinstance(baseline, str):
            if baseline != "mean":
                raise ValueError(f"baseline must be a number, a tensor or 'mean', got {baseline!r}")
            b = x.reshape(n, -1).mean(dim=1).view((n,) + (1,) * (x.dim() - 1))
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            b = torch.tensor(float(baseline), dtype=x.dtype, device=x.device)
        elif isinstance(baseline, Tensor):
            b = baseline.to(device=x.device, dtype=x.dtype)
            try:
                torch.broadcast_shapes(b.shape, x.shape)
            except RuntimeError:
                raise ValueError(
                    f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs {tuple(x.shape)}"
                ) from None
        else:
            raise TypeError(f"unsupported baseline type {type(baseline).__name__}")
        out.append(b)
    return tuple(out)


def _unit_scores(attr: tuple[Tensor, ...], channel_dim: int | None) -> Tensor:
    """``(N, P)`` relevance of each removal unit (a coordinate, or a pixel over channels)."""
    n = attr[0].shape[0]
    if channel_dim is None:
        return torch.cat([a.reshape(n, -1) for a in attr], dim=1)
    return attr[0].sum(dim=channel_dim).reshape(n, -1)


def _unit_to_inputs(mask: Tensor, tup: tuple[Tensor, ...], channel_dim: int | None) -> tuple[Tensor, ...]:
    """Expand a ``(N, P)`` unit mask to boolean masks shaped like each input."""
    if channel_dim is None:
        sizes = [x[0].numel() for x in tup]
        parts = mask.split(sizes, dim=1)
        return tuple(p.reshape(x.shape) for p, x in zip(parts, tup, strict=True))
    x = tup[0]
    reduced = list(x.shape)
    reduced.pop(channel_dim)
    return (mask.reshape(reduced).unsqueeze(channel_dim).expand(x.shape),)


def aopc(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    attributions: AttributionsLike,
    target: TargetType = None,
    *,
    steps: int | Sequence[int] = (20, 50, 100),
    features_per_step: int = 1,
    baseline: BaselineLike = 0.0,
    output: str = "probability",
    absolute: bool = False,
    channel_dim: int | None = None,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> AOPCResult:
    """Area over the MoRF perturbation curve at each number of removal steps in ``steps``.

    Removal units are ranked by decreasing attribution (ties: lower index first); step ``l``
    replaces the ``l * features_per_step`` most relevant units by the ``baseline`` and records the
    target output ``f(x^(l))``. ``AOPC_L`` is the mean of ``f(x^(0)) - f(x^(l))`` over
    ``l = 0..L``. Higher AOPC means a more faithful attribution.

    Args:
        forward_func: the model or any callable returning ``(batch, classes)`` scores; a module is
            never modified (it must be in eval mode if it has BatchNorm or Dropout).
        inputs: tensor or tuple of tensors, batch first.
        attributions: precomputed attributions shaped like ``inputs``, or an attribution function
            ``(inputs, target=...) -> attributions`` (e.g. ``Saliency(model).attribute``).
        target: explained classes; ``None`` uses the predictions on the clean inputs.
        steps: the ``L`` values to report (the curve is computed up to ``max(steps)``).
        features_per_step: units removed per step.
        baseline: fill value of removed units: a number, ``"mean"`` (each example's mean), a
            tensor broadcastable to the inputs, or a tuple of these for tuple inputs.
        output: ``"probability"`` (softmax of the target class) or ``"logit"``.
        absolute: rank by absolute attribution (default: by value, positive evidence first).
        channel_dim: for a single image input, the channel dimension: units are then pixels,
            ranked by the attribution summed over channels, and removed in every channel.
        additional_forward_args: extra forward arguments.
        attribute_kwargs: extra keyword arguments when ``attributions`` is a function.
        batch_size: examples per forward call.
        progress: tqdm progress bar over steps.

    Returns:
        :class:`AOPCResult`.

    Examples:
        >>> from captum.attr import Saliency
        >>> res = aopc(net, x, Saliency(net).attribute, y, steps=(20, 50))  # doctest: +SKIP
        >>> res.mean()  # doctest: +SKIP
    """
    steps_t = _steps(steps)
    if isinstance(features_per_step, bool) or not isinstance(features_per_step, int) or features_per_step < 1:
        raise ValueError(f"features_per_step must be a positive int, got {features_per_step!r}")
    if output not in ("probability", "logit"):
        raise ValueError(f"output must be 'probability' or 'logit', got {output!r}")
    check_batch_size(batch_size, "batch_size")
    tup, is_tuple = format_inputs(inputs)
    if channel_dim is not None:
        if is_tuple:
            raise ValueError("channel_dim works with a single input tensor, not a tuple")
        if not -tup[0].dim() < channel_dim < tup[0].dim() or channel_dim % tup[0].dim() == 0:
            raise ValueError(
                f"channel_dim {channel_dim} is not a non-batch dimension of inputs "
                f"shaped {tuple(tup[0].shape)}"
            )
        channel_dim = channel_dim % tup[0].dim()
    if isinstance(forward_func, nn.Module):
        check_eval_mode(forward_func, "forward_func")
    elif not callable(forward_func):
        raise TypeError("forward_func must be a model or a callable returning class scores")
    args = format_additional_args(additional_forward_args)
    n = tup[0].shape[0]
    tgt = resolve_target(forward_func, tup, target, args, batch_size)

    if isinstance(attributions, (Tensor, tuple)):
        attr = attributions
    elif callable(attributions):
        attr = compute_attributions(
            attributions,
            inputs,
            tgt,
            additional_forward_args=additional_forward_args,
            attribute_kwargs=attribute_kwargs,
            max_examples_per_batch=batch_size,
        )
    else:
        raise TypeError("attributions must be a tensor, a tuple of tensors or a function")
    attr_t = attr if isinstance(attr, tuple) else (attr,)
    if len(attr_t) != len(tup) or any(
        not isinstance(a, Tensor) or a.shape != x.shape for a, x in zip(attr_t, tup, strict=False)
    ):
        raise ValueError(
            "attributions must be shaped like the inputs: got "
            f"{[tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in attr_t]} "
            f"for inputs {[tuple(x.shape) for x in tup]}"
        )
    attr_t = tuple(a.detach().to(tup[0].device) for a in attr_t)
    units = _unit_scores(attr_t, channel_dim)
    if absolute:
        units = units.abs()
    p = units.shape[1]
    last = max(steps_t)
    if last * features_per_step > p:
        raise ValueError(
            f"max(steps) * features_per_step = {last * features_per_step} exceeds the "
            f"{p} removal units per example"
        )
    bases = _baselines(baseline, tup)
    order = torch.sort(units, dim=1, descending=True, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(p, device=order.device).expand(n, p))

    bs = n if batch_size is None else batch_size
    from tqdm.auto import tqdm

    rows = []
    with torch.no_grad():
        for step in tqdm(range(last + 1), desc="AOPC", disable=not progress, leave=False):
            removed = _unit_to_inputs(position < step * features_per_step, tup, channel_dim)
            perturbed = tuple(torch.where(m, b, x) for m, b, x in zip(removed, bases, tup, strict=True))
            vals = []
            for start in range(0, n, bs):
                idx = torch.arange(start, min(start + bs, n), device=tup[0].device)
                out = forward_func(*(x[idx] for x in perturbed), *select_additional_args(args, n, idx))
                if output == "probability":
                    out = torch.softmax(out, dim=1)
                vals.append(out.gather(1, tgt[idx].view(-1, 1).to(out.device))[:, 0])
            rows.append(torch.cat(vals))
    scores = torch.stack(rows)  # (last + 1, N)
    drops = scores[:1] - scores
    cum = torch.cumsum(drops, dim=0)
    aopc_vals = torch.stack([cum[s] / (s + 1) for s in steps_t])
    return AOPCResult(steps=steps_t, aopc=aopc_vals, scores=scores, target=tgt)


@dataclass
class FidelityDrop:
    """Relative fidelity drop of a post-processed attribution against its base method.

    Attributes:
        steps: the ``L`` values.
        drop: ``(len(steps),)`` relative drop in percent,
            ``100 * (mean AOPC_base - mean AOPC_processed) / mean AOPC_base`` (lower is better;
            negative means the processed attribution is more faithful).
        base: AOPC of the base attributions.
        processed: AOPC of the post-processed attributions.
    """

    steps: tuple[int, ...]
    drop: Tensor
    base: AOPCResult = field(repr=False)
    processed: AOPCResult = field(repr=False)


def relative_fidelity_drop(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    base_attributions: AttributionsLike,
    processed_attributions: AttributionsLike,
    target: TargetType = None,
    **aopc_kwargs: Any,
) -> FidelityDrop:
    """Relative drop (%) of AOPC_MoRF of a post-processed attribution vs its base (Table 5).

    Both attributions are scored with :func:`aopc` on the same inputs, targets and settings; the
    drop at each ``L`` is ``100 * (mean AOPC_base - mean AOPC_processed) / mean AOPC_base``.

    Args:
        forward_func: the model or a callable returning class scores.
        inputs: tensor or tuple of tensors, batch first.
        base_attributions: attributions (or attribution function) of the base method, e.g. the
            simple gradient.
        processed_attributions: attributions (or function) of the post-processed method, e.g. the
            sparsified gradient.
        target: explained classes; ``None`` uses the predictions.
        **aopc_kwargs: settings passed to :func:`aopc` (``steps``, ``features_per_step``,
            ``baseline``, ``output``, ``channel_dim``, ...).

    Returns:
        :class:`FidelityDrop`.

    Raises:
        ValueError: when the base method's mean AOPC is 0 at some ``L`` (no relative drop).

    Examples:
        >>> res = relative_fidelity_drop(
        ...     net, x, grad, sparse_grad, y, steps=(20, 50, 100))  # doctest: +SKIP
        >>> res.drop  # doctest: +SKIP
    """
    if isinstance(forward_func, nn.Module):
        check_eval_mode(forward_func, "forward_func")
    tup, _ = format_inputs(inputs)
    args = format_additional_args(aopc_kwargs.get("additional_forward_args"))
    tgt = resolve_target(forward_func, tup, target, args, aopc_kwargs.get("batch_size"))
    base = aopc(forward_func, inputs, base_attributions, tgt, **aopc_kwargs)
    proc = aopc(forward_func, inputs, processed_attributions, tgt, **aopc_kwargs)
    mb, mp = base.mean(), proc.mean()
    if (mb == 0).any():
        raise ValueError("the base attribution's mean AOPC is 0 at some L: no relative drop")
    return FidelityDrop(steps=base.steps, drop=100.0 * (mb - mp) / mb, base=base, processed=proc)
