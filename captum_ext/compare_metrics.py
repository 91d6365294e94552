"""The metrics of a comparison: one per-example score each, with its direction stated explicitly.

A :class:`Metric` is a name, a scoring function and ``higher_is_better``. The scoring function is
called as ``score(forward_func, inputs, attributions, *, target, additional_forward_args,
explain)`` and returns one number per example (a ``(N,)`` tensor): ``attributions`` are the
method's maps (shaped like ``inputs``), ``target`` the ``(N,)`` explained classes and ``explain``
the method as a function ``(inputs, target=...) -> attributions`` for metrics that re-explain
perturbed inputs (``sensitivity_max``). The constructors below adapt :mod:`captum_ext.metrics`
and :mod:`captum.metrics`; any other metric is one ``Metric(name, score, higher_is_better)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Metric",
    "aopc_metric",
    "diff_roar_metric",
    "gaussian_perturbation",
    "infidelity_metric",
    "leakage_metric",
    "pixel_perturbation_metric",
    "sensitivity_metric",
]

ScoreFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Metric:
    """One metric of :func:`~captum_ext.compare_attributions`: a per-example score and its direction.

    Attributes:
        name: the column name (unique within a comparison).
        score: ``score(forward_func, inputs, attributions, *, target, additional_forward_args,
            explain) -> (N,) tensor`` (see the module docstring).
        higher_is_better: ``True`` when a larger score means a better attribution (AOPC,
            probability kept), ``False`` when smaller is better (infidelity, leakage).

    Examples:
        >>> def mean_abs(forward_func, inputs, attributions, **context):
        ...     return attributions.abs().flatten(1).mean(dim=1)
        >>> Metric("mean |attribution|", mean_abs, higher_is_better=False)
        Metric('mean |attribution|', lower is better)
    """

    name: str
    score: ScoreFn
    higher_is_better: bool

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a metric needs a non-empty name, got {self.name!r}")
        if not callable(self.score):
            raise TypeError(f"metric {self.name!r}: score must be callable, got {type(self.score).__name__}")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(
                f"metric {self.name!r}: higher_is_better must be True or False, got {self.higher_is_better!r}"
            )

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, {'higher' if self.higher_is_better else 'lower'} is better)"


def _run_ours(name: str, forward_func, inputs, attributions, target, additional_forward_args, **options):
    """Call the metric ``captum_ext.metrics.<name>`` in its Captum-style signature."""
    from . import metrics

    fn = getattr(metrics, name)
    return fn(
        forward_func,
        inputs,
        attributions,
        target=target,
        additional_forward_args=additional_forward_args,
        **options,
    )


def gaussian_perturbation(stdev: float) -> Callable[..., tuple[Any, Any]]:
    """A ``perturb_func`` for :func:`captum.metrics.infidelity`: Gaussian noise of ``stdev``.

    Returns ``(noise, inputs - noise)`` for a tensor or a tuple of tensors (Captum's convention:
    the perturbation is the input minus the perturbed input). The noise comes from torch's global
    generator, which :func:`~captum_ext.compare_attributions` seeds.

    Examples:
        >>> noise, perturbed = gaussian_perturbation(0.1)(torch.zeros(2, 3))
        >>> torch.equal(perturbed, -noise)
        True
    """
    if not stdev > 0:
        raise ValueError(f"stdev must be > 0, got {stdev}")

    def perturb(inputs: Any) -> tuple[Any, Any]:
        tup = inputs if isinstance(inputs, tuple) else (inputs,)
        noise = tuple(torch.randn_like(x) * stdev for x in tup)
        perturbed = tuple(x - e for x, e in zip(tup, noise, strict=True))
        return (noise, perturbed) if isinstance(inputs, tuple) else (noise[0], perturbed[0])

    return perturb


def infidelity_metric(
    perturb_func: Callable[..., Any] | None = None,
    *,
    stdev: float = 0.1,
    n_perturb_samples: int = 10,
    normalize: bool = True,
    max_examples_per_batch: int | None = None,
) -> Metric:
    """:func:`captum.metrics.infidelity` as a comparison metric (lower is better).

    ``normalize=True`` (the default here, not Captum's) rescales each map by the least-squares
    factor before scoring, so that methods on different scales are compared fairly: CASO's and
    CAFO's maps are about 30x smaller than Saliency's, and unnormalised infidelity then scores them
    like an all-zero map.

    Args:
        perturb_func: Captum's ``perturb_func``; ``None``: :func:`gaussian_perturbation` of ``stdev``.
        stdev: noise level of the default perturbation.
        n_perturb_samples, max_examples_per_batch: as in Captum.
        normalize: Captum's ``normalize``.

    Examples:
        >>> infidelity_metric()
        Metric('infidelity', lower is better)
    """
    from captum.metrics import infidelity

    perturb = gaussian_perturbation(stdev) if perturb_func is None else perturb_func

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        return infidelity(
            forward_func,
            perturb,
            inputs,
            attributions,
            additional_forward_args=additional_forward_args,
            target=target,
            n_perturb_samples=n_perturb_samples,
            max_examples_per_batch=max_examples_per_batch,
            normalize=normalize,
        )

    return Metric("infidelity", score, higher_is_better=False)


def sensitivity_metric(
    *, perturb_radius: float = 0.02, n_perturb_samples: int = 10, max_examples_per_batch: int | None = None
) -> Metric:
    """:func:`captum.metrics.sensitivity_max` as a comparison metric (lower is better).

    The method is re-run on ``n_perturb_samples`` perturbed copies of each input, so it must be
    given as an attribution object or a function, not as precomputed tensors.

    Examples:
        >>> sensitivity_metric()
        Metric('sensitivity_max', lower is better)
    """
    from captum.metrics import sensitivity_max

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        if explain is None:
            raise ValueError(
                "sensitivity_max re-explains perturbed inputs: give the method as an attribution "
                "object or a function (inputs, target) -> attributions, not as tensors"
            )
        extra = (
            {} if additional_forward_args is None else {"additional_forward_args": additional_forward_args}
        )
        return sensitivity_max(
            explain,
            inputs,
            perturb_radius=perturb_radius,
            n_perturb_samples=n_perturb_samples,
            max_examples_per_batch=max_examples_per_batch,
            target=target,
            **extra,
        )

    return Metric("sensitivity_max", score, higher_is_better=False)


def pixel_perturbation_metric(
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    order: str = "least",
    baselines: Any = "mean",
    output: str = "probability",
    seed: int = 0,
    max_examples_per_batch: int | None = None,
) -> Metric:
    """:func:`captum_ext.metrics.pixel_perturbation` per example, averaged over ``fractions``.

    The score of an example is its target probability (``output="probability"``) or its hit
    (prediction == target, ``output="accuracy"``, named "hits") after removal, averaged over the
    fractions.
    Removing the *least* relevant pixels should keep the prediction (higher is better); removing
    the *most* relevant should destroy it (lower is better): the direction follows ``order``.

    Examples:
        >>> pixel_perturbation_metric(order="most")
        Metric('pixel perturbation (most)', lower is better)
    """
    if order not in ("least", "most"):
        raise ValueError(f"order must be 'least' or 'most', got {order!r}")
    if output not in ("probability", "accuracy"):
        raise ValueError(f"output must be 'probability' or 'accuracy', got {output!r}")
    fracs = tuple(float(f) for f in fractions)

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        res = _run_ours(
            "pixel_perturbation",
            forward_func,
            inputs,
            attributions,
            target,
            additional_forward_args,
            baselines=baselines,
            max_examples_per_batch=max_examples_per_batch,
            fractions=fracs,
            order=order,
            seed=seed,
        )
        per = res.probs if output == "probability" else res.correct
        return per.double().mean(dim=0)

    suffix = "" if output == "probability" else ", hits"
    name = f"pixel perturbation ({order}{suffix})"
    return Metric(name, score, higher_is_better=order == "least")


def diff_roar_metric(
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    baselines: Any = 0.0,
    aggregate: str = "abs",
    seed: int = 0,
    max_examples_per_batch: int | None = None,
) -> Metric:
    """DiffROAR without retraining (Shah et al., App. C) per example (higher is better).

    For each ``k`` in ``fractions``: the hit (prediction == target) of the explained model with only
    the top-``k`` share of the units kept (the rest set to ``baselines``) minus its hit with only the
    bottom-``k`` share kept; the score averages this over the fractions. Keeping the top-``k`` is
    removing the least relevant ``1 - k``, so it is computed with two
    :func:`~captum_ext.metrics.pixel_perturbation` calls (``order="least"`` and ``"most"``, removal
    fractions ``1 - k``); its mean over the examples is the mean of
    ``diff_roar(..., retrain=False)``'s curve up to the rounding of ``k`` times the number of units.
    A random map scores about 0.

    Examples:
        >>> diff_roar_metric((0.1, 0.5))
        Metric('DiffROAR (no retraining)', higher is better)
    """
    keep = tuple(float(k) for k in fractions)
    if not keep or not all(0.0 < k < 1.0 for k in keep):
        raise ValueError(f"fractions k of units kept must lie in (0, 1), got {fractions}")
    removed = tuple(1.0 - k for k in keep)

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        hits = []
        for order in ("least", "most"):  # removing the least relevant keeps the top-k, and vice versa
            res = _run_ours(
                "pixel_perturbation",
                forward_func,
                inputs,
                attributions,
                target,
                additional_forward_args,
                baselines=baselines,
                max_examples_per_batch=max_examples_per_batch,
                fractions=removed,
                order=order,
                aggregate=aggregate,
                seed=seed,
            )
            hits.append(res.correct.double())
        return (hits[0] - hits[1]).mean(dim=0)

    return Metric("DiffROAR (no retraining)", score, higher_is_better=True)


def aopc_metric(
    steps: int = 20,
    *,
    baselines: Any = 0.0,
    aggregate: str = "abs",
    max_examples_per_batch: int | None = None,
) -> Metric:
    """:func:`captum_ext.metrics.aopc` at ``L = steps`` per example (higher is better).

    ``aggregate="abs"`` ranks features by magnitude, so the score does not depend on a method's
    sign convention; pass ``"signed"`` for AOPC's original positive-evidence-first order.

    Examples:
        >>> aopc_metric(10)
        Metric('AOPC@10', higher is better)
    """

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        res = _run_ours(
            "aopc",
            forward_func,
            inputs,
            attributions,
            target,
            additional_forward_args,
            baselines=baselines,
            max_examples_per_batch=max_examples_per_batch,
            steps=(steps,),
            aggregate=aggregate,
        )
        return res.aopc[0]

    return Metric(f"AOPC@{steps}", score, higher_is_better=True)


def leakage_metric(signal_masks: Tensor | tuple[Tensor, ...], *, aggregate: str = "abs") -> Metric:
    """:func:`captum_ext.metrics.feature_leakage` per example (lower is better).

    Args:
        signal_masks: the ground-truth signal of every compared example, shaped like the inputs
            (e.g. BlockMNIST's masks).
        aggregate: as in :func:`~captum_ext.metrics.feature_leakage`.

    Examples:
        >>> leakage_metric(torch.ones(2, 3))
        Metric('leakage', lower is better)
    """

    def score(forward_func, inputs, attributions, *, target, additional_forward_args, explain):
        from .metrics import feature_leakage

        return feature_leakage(inputs, attributions, signal_masks, aggregate=aggregate).leakage

    return Metric("leakage", score, higher_is_better=False)
