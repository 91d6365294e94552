"""Discriminative pixel perturbation (Srinivas & Fleuret, ICLR 2021, Sec. 4.2 and 5.2.1).

Remove a fraction of the pixels that an attribution ranks least (or most) relevant -- replace them
by the image's mean pixel value or a constant -- and report the model's **accuracy** on the result
(and the mean softmax probability of the label), without retraining. Sec. 4.2 of the paper shows
that the classic variant, which reports the change of *logits*, measures a density ratio of the
implicit density model rather than discriminative behaviour; accuracy (or probability) does not.
Attributions may come from another model than the one scored (the paper's cross-model setting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor

from .._format import format_additional_args, format_inputs, run_forward, select_additional_args
from ._common import (
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
from ._masking import (
    UnitLayout,
    check_fractions,
    counts_for_fractions,
    format_baselines,
    keep_mask_from_rank,
    rank_units,
    select_baselines,
)
from ._validate import OneOf, validate

__all__ = ["PIXEL_FRACTIONS", "PixelPerturbationResult", "pixel_perturbation"]

PIXEL_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, eq=False, repr=False)
class PixelPerturbationResult(MetricResult):
    """Outcome of :func:`pixel_perturbation`.

    Attributes:
        fractions: fractions of pixels removed, ``F`` of them.
        accuracy: ``(F,)`` accuracy after removing each fraction (mean of ``correct``).
        label_prob: ``(F,)`` mean softmax probability of the target after removal.
        counts: pixels (units) removed per example at each fraction.
        units: pixels (units) per example.
        baseline_accuracy: accuracy on the unperturbed inputs.
        baseline_label_prob: mean target probability on the unperturbed inputs.
        order: ``"least"`` or ``"most"`` (which pixels were removed first).
        correct: ``(F, N)`` per-example hits (prediction == target) after each removal.
        probs: ``(F, N)`` per-example target probability after each removal (float64).
        baseline_correct: ``(N,)`` hits on the unperturbed inputs.
        baseline_probs: ``(N,)`` target probabilities on the unperturbed inputs.
        target: ``(N,)`` the classes scored.

    Examples:
        Only the first feature decides the class; removing the three least relevant ones keeps the
        accuracy, removing everything (baseline 0: tied logits, class 0 wins) halves it:

        >>> net = torch.nn.Linear(4, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        >>> x = torch.tensor([[1.0, 0.3, 0.2, 0.1], [-1.0, 0.5, 0.1, 0.9]])
        >>> y = torch.tensor([0, 1])
        >>> attr = x * net.weight[y].detach()  # gradient x input
        >>> res = pixel_perturbation(net, x, attr, target=y, baselines=0.0, fractions=(0.75, 1.0))
        >>> res.baseline_accuracy, res.accuracy, res.counts
        (1.0, tensor([1.0000, 0.5000], dtype=torch.float64), (3, 4))
        >>> sorted(res.to_dict())[:4]
        ['accuracy', 'baseline_accuracy', 'baseline_label_prob', 'counts']
    """

    fractions: tuple[float, ...]
    accuracy: Tensor
    label_prob: Tensor
    counts: tuple[int, ...]
    units: int
    baseline_accuracy: float
    baseline_label_prob: float
    order: str
    correct: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    probs: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    baseline_correct: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    baseline_probs: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    target: Tensor = field(repr=False, metadata=NOT_IN_DICT)

    def plot(self, ax: Any = None, label: str | None = None, prob: bool = False) -> Any:
        """Plot accuracy (or mean target probability) against the fraction of pixels removed.

        Args:
            ax: matplotlib ``Axes`` (a new figure when ``None``).
            label: legend label.
            prob: plot the mean target probability instead of the accuracy.

        Returns:
            The matplotlib ``Axes``.
        """
        ax = self._axes(ax)
        x = [0.0] + [100 * f for f in self.fractions]
        base = self.baseline_label_prob if prob else self.baseline_accuracy
        y = [base] + (self.label_prob if prob else self.accuracy).tolist()
        ax.plot(x, y, marker="o", label=label)
        ax.set_xlabel(f"{self.order} relevant pixels removed (%)")
        ax.set_ylabel("mean probability of the label" if prob else "accuracy")
        if label is not None:
            ax.legend(loc="best", fontsize="small")
        return ax


@log_usage()
def pixel_perturbation(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    attributions: Tensor | tuple[Tensor, ...] | Callable[..., Any],
    *,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    baselines: Any = "mean",
    max_examples_per_batch: int | None = None,
    fractions: Iterable[float] = PIXEL_FRACTIONS,
    order: str = "least",
    aggregate: str = "abs_sum",
    channel_dim: int = 1,
    seed: int = 0,
    attribute_kwargs: dict[str, Any] | None = None,
    model_outputs: str = "logits",
    show_progress: bool = False,
) -> PixelPerturbationResult:
    """Discriminative pixel perturbation: accuracy after removing the least relevant pixels.

    For every fraction ``f`` exactly ``round_half_up(f * P)`` of the ``P`` pixels of each example
    (see :func:`~captum_ext.metrics._masking.count_for_fraction`; at least one) are replaced by the
    ``baselines``: the ones with the lowest relevance (``order="least"``, the paper's test: a good
    attribution keeps the accuracy) or the highest (``order="most"``: a good attribution destroys it).
    A pixel's relevance aggregates its channels (sum of absolute values by default); ties are broken
    at random with ``seed``, over the whole input at once, so the result does not depend on
    ``max_examples_per_batch``. For a tuple of inputs all their pixels are ranked together.

    Args:
        forward_func: the model (or any function) returning ``(batch, classes)`` scores; softmax of
            these gives the target probability. It may differ from the model that produced the
            attributions (cross-model setting). A module with BatchNorm/Dropout in training mode is
            refused (``ValueError``); the model is never changed.
        inputs: a tensor or tuple of tensors, batch first (``(N, C, H, W)`` for images).
        attributions: tensors shaped like ``inputs``, or a callable ``(inputs, target=...) ->
            attributions`` (e.g. a Captum attribution's ``attribute``), called in batches with the
            target (and ``additional_forward_args`` when given).
        target: the classes the accuracy is measured against (usually the true labels), in any
            Captum form for a classifier (int, list, tensor ``(N,)``); ``None`` uses the model's
            predictions on the unperturbed inputs (baseline accuracy 1).
        additional_forward_args: Captum-style extra arguments of ``forward_func``.
        baselines: the fill of removed pixels: ``"mean"`` (each example's mean value, the paper's
            choice), ``"channel_mean"``, a number, a tensor shaped like one example, or a
            per-example tensor ``(N, ...)`` (checked against the whole input), or a tuple of these
            for tuple inputs.
        max_examples_per_batch: examples per forward pass (and per attribution call); ``None``:
            all at once.
        fractions: fractions of pixels removed, in ``(0, 1]``; each must remove at least one pixel.
        order: ``"least"`` (default) or ``"most"`` relevant pixels removed.
        aggregate: relevance of a pixel: ``"abs_sum"`` (default), ``"sum"``, ``"abs_max"``, ``"l2"``
            over ``channel_dim``, or ``"abs"`` / ``"signed"`` to rank every coordinate on its own.
        channel_dim: the channel dimension of the inputs (for ``aggregate`` and ``"channel_mean"``).
        seed: seed of the random tie-breaking.
        attribute_kwargs: extra keyword arguments when ``attributions`` is a function (e.g.
            ``{"nt_samples": 10}``).
        model_outputs: ``"logits"`` (default; softmaxed for ``label_prob``) or
            ``"probabilities"`` (a model that returns class probabilities; a model returning them
            undeclared is refused rather than softmaxed twice).
        show_progress: tqdm progress bar over batches.

    Returns:
        A :class:`PixelPerturbationResult` with the curves (``.accuracy``, ``.label_prob``), the
        per-example values (``.correct``, ``.probs``), the unperturbed baselines and ``.plot()``.

    Raises:
        ValueError: empty or NaN inputs/attributions, attributions not shaped like the inputs,
            fractions outside ``(0, 1]`` or removing no pixel, targets of the wrong length or out of
            range, baselines that fit neither one example nor all ``N``, a train-mode model, unknown
            ``order``/``aggregate``.

    Examples:
        >>> from captum.attr import Saliency
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = pixel_perturbation(net, x, Saliency(net).attribute, target=y, fractions=(0.25, 0.5))
        >>> res.accuracy.shape, res.correct.shape
        (torch.Size([2]), torch.Size([2, 8]))
    """
    check_eval_mode(forward_func)
    if callable(attributions):
        check_eval_mode(attributions, "the model behind attributions")
    validate(order=(order, OneOf(("least", "most"))))
    check_batch_size(max_examples_per_batch)
    xs, _ = format_inputs(inputs)
    n = check_data(xs)
    layout = UnitLayout.of(xs, aggregate, channel_dim)
    fracs = check_fractions(fractions)
    counts = counts_for_fractions(fracs, layout.total, "removed")
    fills = format_baselines(baselines, xs)
    extra = format_additional_args(additional_forward_args)
    bs = n if max_examples_per_batch is None else max_examples_per_batch

    clean = forward_batched(forward_func, xs, extra, max_examples_per_batch).to(torch.float64)
    tgt = clean.argmax(dim=1) if target is None else check_labels(target, n, clean.shape[1])
    tgt = tgt.to(clean.device)
    base_correct = (clean.argmax(dim=1) == tgt).cpu()
    check_model_outputs(clean, model_outputs)
    base_probs = class_probabilities(clean, model_outputs).gather(1, tgt[:, None])[:, 0].cpu()

    attrs_t = resolve_attributions(
        attributions,
        inputs,
        tgt.to(xs[0].device),
        additional_forward_args=additional_forward_args,
        attribute_kwargs=attribute_kwargs,
        max_examples_per_batch=max_examples_per_batch,
    )
    rank = rank_units(layout.scores(attrs_t), torch.Generator().manual_seed(seed))
    which = "bottom" if order == "least" else "top"

    correct = torch.zeros(len(counts), n, dtype=torch.bool)
    probs = torch.zeros(len(counts), n, dtype=torch.float64)
    from tqdm.auto import tqdm

    starts = range(0, n, bs)
    with torch.no_grad():
        for start in tqdm(starts, desc="pixel perturbation", disable=not show_progress, leave=False):
            idx = torch.arange(start, min(n, start + bs))
            xb = tuple(x[start : start + bs] for x in xs)
            fb = select_baselines(fills, n, idx)
            args_b = select_additional_args(extra, n, idx)
            tb = tgt[start : start + bs]
            for j, k in enumerate(counts):
                keep = ~keep_mask_from_rank(rank[start : start + bs], k, which)
                out = run_forward(forward_func, layout.fill(xb, keep, fb), args_b).to(torch.float64)
                t = tb.to(out.device)
                correct[j, idx] = (out.argmax(dim=1) == t).cpu()
                probs[j, idx] = class_probabilities(out, model_outputs).gather(1, t[:, None])[:, 0].cpu()
    return PixelPerturbationResult(
        fractions=fracs,
        accuracy=correct.to(torch.float64).mean(dim=1),
        label_prob=probs.mean(dim=1),
        counts=counts,
        units=layout.total,
        baseline_accuracy=float(base_correct.to(torch.float64).mean()),
        baseline_label_prob=float(base_probs.mean()),
        order=order,
        correct=correct,
        probs=probs,
        baseline_correct=base_correct,
        baseline_probs=base_probs,
        target=tgt.cpu(),
    )
