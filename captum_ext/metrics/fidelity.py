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
from captum.log import log_usage
from torch import Tensor

from captum_ext._format import (
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from captum_ext.metrics._common import (
    NOT_IN_DICT,
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    check_labels,
    check_model_outputs,
    class_probabilities,
    forward_batched,
    resolve_attributions,
)
from captum_ext.metrics._masking import UnitLayout, format_baselines, rank_units, select_baselines
from captum_ext.metrics._validate import POSITIVE_INT, OneOf, validate
from captum_ext.metrics.similarity import AttrLike

__all__ = ["AOPCResult", "FidelityDrop", "aopc", "relative_fidelity_drop"]

AttributionsLike = AttrLike | Callable[..., AttrLike]


@dataclass(frozen=True, eq=False, repr=False)
class AOPCResult(MetricResult):
    """AOPC under MoRF removal.

    Attributes:
        steps: the ``L`` values.
        aopc: ``(len(steps), N)`` per-example AOPC at each ``L``.
        scores: ``(max(steps) + 1, N)`` target output ``f(x^(l))`` after ``l`` removal steps.
        target: ``(N,)`` explained classes.

    Examples:
        ``f(x) = x₁ + x₂ + x₃`` at ``x = (3, 2, 1)`` explained by ``x`` itself: the most relevant first
        removal gives the outputs 6, 3, 1, 0, so ``AOPC_1 = (0 + 3) / 2`` and
        ``AOPC_3 = (0 + 3 + 5 + 6) / 4``:

        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> x = torch.tensor([[3.0, 2.0, 1.0]])
        >>> res = aopc(net, x, x, target=0, steps=(1, 3), output="logit")
        >>> res.scores.flatten(), res.mean()
        (tensor([6., 3., 1., 0.]), tensor([1.5000, 3.5000]))
        >>> res.to_dict()
        {'steps': [1, 3], 'aopc': [[1.5], [3.5]]}
    """

    steps: tuple[int, ...]
    aopc: Tensor
    scores: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    target: Tensor = field(repr=False, metadata=NOT_IN_DICT)

    def mean(self) -> Tensor:
        """Mean AOPC over examples at each ``L``, shape ``(len(steps),)``."""
        return self.aopc.mean(dim=1)

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        """Plot the mean output drop ``f(x^(0)) - f(x^(l))`` against ``l``; returns the Axes."""
        ax = self._axes(ax, (4.5, 3.2))
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


@log_usage()
def aopc(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    attributions: AttributionsLike,
    *,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    baselines: Any = 0.0,
    max_examples_per_batch: int | None = None,
    steps: int | Sequence[int] = (20, 50, 100),
    features_per_step: int = 1,
    output: str = "probability",
    aggregate: str = "signed",
    channel_dim: int = 1,
    attribute_kwargs: dict[str, Any] | None = None,
    model_outputs: str = "logits",
    show_progress: bool = False,
) -> AOPCResult:
    """Area over the MoRF perturbation curve at each number of removal steps in ``steps``.

    Removal units are ranked by decreasing relevance (ties: lower index first; for tuple inputs the
    units of all inputs are ranked together); step ``l`` replaces the ``l * features_per_step`` most
    relevant units by the ``baselines`` and records the target output ``f(x^(l))``. ``AOPC_L`` is the
    mean of ``f(x^(0)) - f(x^(l))`` over ``l = 0..L``. Higher AOPC means a more faithful attribution.

    Args:
        forward_func: the model or any callable returning ``(batch, classes)`` scores; a module is
            never modified (one with BatchNorm or Dropout in training mode is refused).
        inputs: tensor or tuple of tensors, batch first.
        attributions: precomputed attributions shaped like ``inputs``, or an attribution function
            ``(inputs, target=...) -> attributions`` (e.g. ``Saliency(model).attribute``).
        target: explained classes in any Captum form; ``None`` uses the predictions on the clean
            inputs.
        additional_forward_args: extra forward arguments (Captum convention).
        baselines: fill value of removed units: a number, ``"mean"`` / ``"channel_mean"`` (each
            example's), a tensor shaped like one example, a per-example tensor ``(N, ...)``, or a
            tuple of these for tuple inputs.
        max_examples_per_batch: examples per forward call (``None``: all at once).
        steps: the ``L`` values to report (the curve is computed up to ``max(steps)``).
        features_per_step: units removed per step.
        output: ``"probability"`` (softmax of the target class) or ``"logit"``.
        aggregate: relevance of a unit: ``"signed"`` (default: every coordinate by value, positive
            evidence first), ``"abs"`` (every coordinate by magnitude), or a pixel over
            ``channel_dim``: ``"sum"`` (signed sum over channels), ``"abs_sum"``, ``"abs_max"``, ``"l2"``.
        channel_dim: the channel dimension for per-pixel aggregates and ``"channel_mean"``.
        attribute_kwargs: extra keyword arguments when ``attributions`` is a function.
        model_outputs: ``"logits"`` (default; softmaxed for ``output="probability"``) or
            ``"probabilities"`` (a model that returns class probabilities; a model returning them
            undeclared is refused rather than softmaxed twice).
        show_progress: tqdm progress bar over steps.

    Returns:
        :class:`AOPCResult` with the per-example ``aopc`` ``(len(steps), N)`` and ``mean()``.

    Raises:
        ValueError: empty or NaN inputs/attributions, attributions not shaped like the inputs,
            ``max(steps) * features_per_step`` beyond the units, bad targets or baselines, a
            train-mode model.

    Examples:
        >>> from captum.attr import Saliency
        >>> net = torch.nn.Linear(6, 3)
        >>> x = torch.rand(4, 6)
        >>> res = aopc(net, x, Saliency(net).attribute, target=0, steps=(2, 4))
        >>> res.aopc.shape, res.mean().shape
        (torch.Size([2, 4]), torch.Size([2]))
    """
    check_eval_mode(forward_func)
    if callable(attributions) and not isinstance(attributions, (Tensor, tuple)):
        check_eval_mode(attributions, "the model behind attributions")
    if not callable(forward_func):
        raise TypeError("forward_func must be a model or a callable returning class scores")
    steps_t = _steps(steps)
    validate(features_per_step=(features_per_step, POSITIVE_INT))
    validate(output=(output, OneOf(("probability", "logit"))))
    check_batch_size(max_examples_per_batch)
    tup, _ = format_inputs(inputs)
    n = check_data(tup)
    layout = UnitLayout.of(tup, aggregate, channel_dim)
    bases = format_baselines(baselines, tup)
    args = format_additional_args(additional_forward_args)
    p = layout.total
    last = max(steps_t)
    if last * features_per_step > p:
        raise ValueError(
            f"max(steps) * features_per_step = {last * features_per_step} exceeds the "
            f"{p} removal units per example"
        )
    clean = forward_batched(forward_func, tup, args, max_examples_per_batch)
    if output == "probability":
        check_model_outputs(clean, model_outputs)
    tgt = clean.argmax(dim=1) if target is None else check_labels(target, n, clean.shape[1]).to(clean.device)

    attr_t = resolve_attributions(
        attributions,
        inputs,
        tgt,
        additional_forward_args=additional_forward_args,
        attribute_kwargs=attribute_kwargs,
        max_examples_per_batch=max_examples_per_batch,
    )
    rank = rank_units(layout.scores(attr_t))  # ties: lower index first

    bs = n if max_examples_per_batch is None else max_examples_per_batch
    from tqdm.auto import tqdm

    rows = []
    with torch.no_grad():
        for step in tqdm(range(last + 1), desc="AOPC", disable=not show_progress, leave=False):
            vals = []
            for start in range(0, n, bs):
                idx = torch.arange(start, min(start + bs, n))
                keep = rank[start : start + bs] >= step * features_per_step
                xb = tuple(x[start : start + bs] for x in tup)
                perturbed = layout.fill(xb, keep, select_baselines(bases, n, idx))
                out = run_forward(
                    forward_func, perturbed, select_additional_args(args, n, idx.to(tup[0].device))
                )
                if output == "probability":
                    out = class_probabilities(out, model_outputs)
                vals.append(out.gather(1, tgt[start : start + bs].view(-1, 1).to(out.device))[:, 0])
            rows.append(torch.cat(vals))
    scores = torch.stack(rows)  # (last + 1, N)
    drops = scores[:1] - scores
    cum = torch.cumsum(drops, dim=0)
    aopc_vals = torch.stack([cum[s] / (s + 1) for s in steps_t])
    return AOPCResult(steps=steps_t, aopc=aopc_vals, scores=scores, target=tgt)


@dataclass(frozen=True, eq=False, repr=False)
class FidelityDrop(MetricResult):
    """Relative fidelity drop of a post-processed attribution against its base method.

    Attributes:
        steps: the ``L`` values.
        drop: ``(len(steps),)`` relative drop in percent,
            ``100 * (mean AOPC_base - mean AOPC_processed) / mean AOPC_base`` (lower is better;
            negative means the processed attribution is more faithful).
        base: AOPC of the base attributions.
        processed: AOPC of the post-processed attributions.

    Examples:
        The reversed ranking (``-x``) removes the least relevant feature first: its AOPC is lower
        (0.5 and 2.5 instead of 1.5 and 3.5), a drop of 66.7% and 28.6%:

        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> x = torch.tensor([[3.0, 2.0, 1.0]])
        >>> res = relative_fidelity_drop(net, x, x, -x, target=0, steps=(1, 3), output="logit")
        >>> res.drop, res.base.mean(), res.processed.mean()
        (tensor([66.6667, 28.5714]), tensor([1.5000, 3.5000]), tensor([0.5000, 2.5000]))
        >>> sorted(res.to_dict())
        ['base', 'drop', 'processed', 'steps']
    """

    steps: tuple[int, ...]
    drop: Tensor
    base: AOPCResult = field(repr=False)
    processed: AOPCResult = field(repr=False)

    def plot(self, ax: Any = None) -> Any:
        """Mean AOPC of the base and the processed attributions against ``L``; returns the Axes."""
        ax = self._axes(ax, (4.5, 3.2))
        ax.plot(self.steps, self.base.mean().cpu().numpy(), marker="o", label="base")
        ax.plot(self.steps, self.processed.mean().cpu().numpy(), marker="s", label="processed")
        ax.set_xlabel("L (removal steps)")
        ax.set_ylabel("mean AOPC")
        ax.legend(fontsize="small")
        return ax


@log_usage()
def relative_fidelity_drop(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    base_attributions: AttributionsLike,
    processed_attributions: AttributionsLike,
    *,
    target: TargetLike = None,
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
        **aopc_kwargs: keyword settings passed to :func:`aopc` (``steps``, ``features_per_step``,
            ``baselines``, ``output``, ``aggregate``, ``max_examples_per_batch``, ...).

    Returns:
        :class:`FidelityDrop`.

    Raises:
        ValueError: when the base method's mean AOPC is 0 at some ``L`` (no relative drop).

    Examples:
        >>> net = torch.nn.Linear(6, 3)
        >>> x = torch.rand(4, 6)
        >>> a = x * net.weight[0].detach()
        >>> res = relative_fidelity_drop(net, x, a, a.clone(), target=0, steps=(3,), output="logit")
        >>> res.drop
        tensor([0.])
    """
    check_eval_mode(forward_func)
    tup, _ = format_inputs(inputs)
    check_data(tup)
    args = format_additional_args(aopc_kwargs.get("additional_forward_args"))
    clean = forward_batched(forward_func, tup, args, aopc_kwargs.get("max_examples_per_batch"))
    n = tup[0].shape[0]
    tgt = clean.argmax(dim=1) if target is None else check_labels(target, n, clean.shape[1])
    base = aopc(forward_func, inputs, base_attributions, target=tgt, **aopc_kwargs)
    proc = aopc(forward_func, inputs, processed_attributions, target=tgt, **aopc_kwargs)
    mb, mp = base.mean(), proc.mean()
    if (mb == 0).any():
        raise ValueError("the base attribution's mean AOPC is 0 at some L: no relative drop")
    return FidelityDrop(steps=base.steps, drop=100.0 * (mb - mp) / mb, base=base, processed=proc)
