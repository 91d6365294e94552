"""Discriminative pixel perturbation (Srinivas & Fleuret, ICLR 2021, Sec. 4.2 and 5.2.1).

Remove a fraction of the pixels that an attribution ranks least (or most) relevant -- replace them
by the image's mean pixel value or a constant -- and report the model's **accuracy** on the result
(and the mean softmax probability of the label), without retraining. Sec. 4.2 of the paper shows
that the classic variant, which reports the change of *logits*, measures a density ratio of the
implicit density model rather than discriminative behaviour; accuracy (or probability) does not.
Attributions may come from another model than the one scored (the paper's cross-model setting).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._format import (
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from .._model_state import has_stochastic_or_batch_layers
from ._attribution import call_attribution, check_like
from ._masking import (
    apply_fill,
    check_fractions,
    count_for_fraction,
    keep_mask_from_rank,
    rank_units,
    relevance_scores,
    unit_mask_to_input,
    unit_shape,
)

__all__ = ["PixelPerturbationResult", "pixel_perturbation"]

PIXEL_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, eq=False)
class PixelPerturbationResult:
    """Outcome of :func:`pixel_perturbation`.

    Attributes:
        fractions: fractions of pixels removed.
        accuracy: ``(F,)`` accuracy after removing each fraction.
        label_prob: ``(F,)`` mean softmax probability of the label after removal.
        counts: pixels (units) removed per example at each fraction.
        units: pixels (units) per example.
        baseline_accuracy: accuracy on the unperturbed inputs.
        baseline_label_prob: mean label probability on the unperturbed inputs.
        order: ``"least"`` or ``"most"`` (which pixels were removed first).
    """

    fractions: tuple[float, ...]
    accuracy: Tensor
    label_prob: Tensor
    counts: tuple[int, ...]
    units: int
    baseline_accuracy: float
    baseline_label_prob: float
    order: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "fractions": list(self.fractions),
            "accuracy": self.accuracy.tolist(),
            "label_prob": self.label_prob.tolist(),
            "counts": list(self.counts),
            "units": self.units,
            "baseline_accuracy": self.baseline_accuracy,
            "baseline_label_prob": self.baseline_label_prob,
            "order": self.order,
        }

    def plot(self, ax: Any = None, label: str | None = None, prob: bool = False) -> Any:
        """Plot accuracy (or mean label probability) against the fraction of pixels removed.

        Args:
            ax: matplotlib ``Axes`` (a new figure when ``None``).
            label: legend label.
            prob: plot the mean label probability instead of the accuracy.

        Returns:
            The matplotlib ``Axes``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        x = [0.0] + [100 * f for f in self.fractions]
        base = self.baseline_label_prob if prob else self.baseline_accuracy
        y = [base] + (self.label_prob if prob else self.accuracy).tolist()
        ax.plot(x, y, marker="o", label=label)
        ax.set_xlabel(f"{self.order} relevant pixels removed (%)")
        ax.set_ylabel("mean probability of the label" if prob else "accuracy")
        if label is not None:
            ax.legend(loc="best", fontsize="small")
        return ax


def pixel_perturbation(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    labels: Any,
    attributions: Tensor | tuple[Tensor, ...] | Callable[..., Any],
    fractions: Iterable[float] = PIXEL_FRACTIONS,
    order: str = "least",
    fill: float | str | Tensor = "mean",
    *,
    aggregate: str = "abs_sum",
    channel_dim: int = 1,
    additional_forward_args: Any = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> PixelPerturbationResult:
    """Discriminative pixel perturbation: accuracy after removing the least relevant pixels.

    For every fraction ``f`` exactly ``round_half_up(f * P)`` of the ``P`` pixels of each example
    (see :func:`~captum_ext.metrics._masking.count_for_fraction`) are replaced by ``fill``: the
    ones with the lowest relevance (``order="least"``, the paper's test: a good attribution keeps
    the accuracy) or the highest (``order="most"``: a good attribution destroys it). A pixel's
    relevance aggregates its channels (sum of absolute values by default); ties are broken at random
    with ``seed``. For a tuple of inputs all their pixels are ranked together.

    Args:
        forward_func: the model (or any function) returning ``(batch, classes)`` scores; softmax of
            these gives the label probability. It may differ from the model that produced the
            attributions (cross-model setting).
        inputs: a tensor or tuple of tensors, batch first (``(N, C, H, W)`` for images).
        labels: the classes to score, in any form of Captum's ``target`` (int, list, tensor).
        attributions: tensors shaped like ``inputs``, or a callable ``(inputs, target) ->
            attributions`` (e.g. a Captum attribution's ``attribute``), called with
            ``target=labels`` in batches.
        fractions: fractions of pixels removed, in ``(0, 1]``.
        order: ``"least"`` (default) or ``"most"`` relevant pixels removed.
        fill: ``"mean"`` (each image's mean value, the paper's choice), ``"channel_mean"``, a
            number, or a tensor broadcastable to the inputs.
        aggregate: relevance of a pixel: ``"abs_sum"`` (default), ``"sum"``, ``"abs_max"``, ``"l2"``
            over ``channel_dim``, or ``"abs"`` / ``"signed"`` to rank every coordinate on its own.
        channel_dim: the channel dimension of the inputs.
        additional_forward_args: Captum-style extra arguments of ``forward_func``.
        batch_size: examples per forward pass (and per attribution call).
        seed: seed of the random tie-breaking.
        progress: tqdm progress bar over batches.

    Returns:
        A :class:`PixelPerturbationResult` with ``.fractions``, ``.accuracy``, ``.label_prob``,
        the baselines and ``.plot()``.

    Raises:
        ValueError: empty inputs, attributions not shaped like the inputs, fractions outside
            ``(0, 1]``, labels of the wrong length, unknown ``order``/``aggregate``/``fill``.

    Examples:
        >>> from captum.attr import Saliency
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = pixel_perturbation(net, x, y, Saliency(net).attribute, fractions=(0.25, 0.5))
        >>> res.accuracy.shape
        torch.Size([2])
    """
    if order not in ("least", "most"):
        raise ValueError(f"order must be 'least' or 'most', got {order!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fracs = check_fractions(fractions)
    xs, is_tuple = format_inputs(inputs)
    n = xs[0].shape[0]
    if n == 0:
        raise ValueError("inputs are empty: need at least one example")
    if any(x.dim() < 2 for x in xs):
        raise ValueError("inputs must be (N, ...) with at least one feature dimension")
    if isinstance(forward_func, nn.Module) and has_stochastic_or_batch_layers(forward_func):
        warnings.warn(
            "forward_func is in training mode with dropout/batch-norm layers; accuracies will be "
            "noisy and batch-norm statistics would change: call model.eval() first",
            stacklevel=2,
        )
    extra = format_additional_args(additional_forward_args)

    with torch.no_grad():
        first = select_additional_args(extra, n, torch.tensor([0]))
        probe = run_forward(forward_func, tuple(x[:1] for x in xs), first)
    target = expand_target(labels, n, probe.shape[1], probe.device)
    if target is None:
        raise ValueError("labels are required (the accuracy is measured against them)")

    if callable(attributions):
        attrs = call_attribution(attributions, xs, is_tuple, target, batch_size, additional_forward_args)
    else:
        attrs = attributions if isinstance(attributions, tuple) else (attributions,)
    check_like(attrs, xs, "pixel_perturbation")
    unit_grids = [unit_shape(x.shape, aggregate, channel_dim) for x in xs]
    sizes = [int(torch.Size(u).numel()) for u in unit_grids]
    total = sum(sizes)
    counts = tuple(count_for_fraction(f, total) for f in fracs)

    gen = torch.Generator().manual_seed(seed)
    correct = torch.zeros(len(fracs), dtype=torch.float64)
    prob_sum = torch.zeros(len(fracs), dtype=torch.float64)
    base_correct = 0.0
    base_prob = 0.0
    from tqdm.auto import tqdm

    starts = range(0, n, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="pixel perturbation", disable=not progress, leave=False):
            idx = torch.arange(start, min(n, start + batch_size))
            xb = tuple(x[start : start + batch_size] for x in xs)
            ab = tuple(a[start : start + batch_size] for a in attrs)
            tb = target[start : start + batch_size]
            args_b = select_additional_args(extra, n, idx)
            scores = torch.cat(
                [relevance_scores(a.to(torch.float64), aggregate, channel_dim).cpu() for a in ab],
                dim=1,
            )
            rank = rank_units(scores, gen)
            hit, prob = _score(forward_func, xb, args_b, tb)
            base_correct += hit
            base_prob += prob
            for j, k in enumerate(counts):
                removed = keep_mask_from_rank(rank, k, "bottom" if order == "least" else "top")
                pieces = torch.split(~removed, sizes, dim=1)
                perturbed = tuple(
                    apply_fill(
                        x,
                        unit_mask_to_input(keep.to(x.device), x.shape, grid),
                        fill,
                        channel_dim,
                    )
                    for x, keep, grid in zip(xb, pieces, unit_grids, strict=True)
                )
                hit, prob = _score(forward_func, perturbed, args_b, tb)
                correct[j] += hit
                prob_sum[j] += prob
    return PixelPerturbationResult(
        fractions=fracs,
        accuracy=correct / n,
        label_prob=prob_sum / n,
        counts=counts,
        units=total,
        baseline_accuracy=base_correct / n,
        baseline_label_prob=base_prob / n,
        order=order,
    )


def _score(
    forward_func: Callable[..., Tensor],
    xs: tuple[Tensor, ...],
    args: tuple[Any, ...],
    target: Tensor,
) -> tuple[float, float]:
    out = run_forward(forward_func, xs, args)
    t = target.to(out.device)
    hits = float((out.argmax(dim=1) == t).sum())
    probs = torch.softmax(out.to(torch.float64), dim=1).gather(1, t[:, None]).sum()
    return hits, float(probs)
