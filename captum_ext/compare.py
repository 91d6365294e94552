"""Compare attribution methods on one model and data: methods x metrics with paired intervals.

:func:`compare_attributions` explains the inputs with every method, scores every map with every
metric *per example*, and bootstraps the examples (the same resamples for every method, see
:mod:`captum_ext.compare_stats`) to put a confidence interval on each mean and on every pairwise
difference. A difference whose interval excludes 0 is called significant; the ranking counts only
significant differences.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._format import TargetLike, TensorOrTuple, format_additional_args, format_inputs
from .compare_metrics import Metric
from .compare_result import Comparison
from .compare_stats import paired_bootstrap
from .metrics._common import check_eval_mode, resolve_attributions, resolve_target

__all__ = ["compare_attributions"]

#: Below this many examples a percentile bootstrap interval undercovers noticeably: a warning says so.
MIN_RELIABLE_EXAMPLES = 20

MethodLike = Any  # a captum.attr.Attribution, a callable (inputs, target) -> attributions, or tensors


def _method_name(method: Any) -> str:
    if hasattr(method, "attribute"):
        return type(method).__name__
    return getattr(method, "__name__", type(method).__name__)


def _named(methods: Mapping[str, MethodLike] | Sequence[MethodLike]) -> dict[str, MethodLike]:
    if isinstance(methods, Mapping):
        named = dict(methods)
    elif isinstance(methods, Sequence) and not isinstance(methods, (str, Tensor)):
        named = {}
        for m in methods:
            name = _method_name(m)
            if name in named:
                raise ValueError(f"two methods are named {name!r}: pass a dict {{name: method}} instead")
            named[name] = m
    else:
        raise TypeError("methods must be a dict {name: method} or a list of methods")
    if len(named) < 2:
        raise ValueError(f"a comparison needs at least two methods, got {len(named)}")
    return named


def _explainer(method: MethodLike) -> Callable[..., Any] | None:
    """The method as a function ``(inputs, target=...) -> attributions``; ``None`` for tensors."""
    if isinstance(method, (Tensor, tuple)):
        return None
    if hasattr(method, "attribute"):
        return method.attribute
    if callable(method):
        return method
    raise TypeError(
        f"a method must be a Captum attribution object, a callable (inputs, target) -> attributions "
        f"or precomputed attributions, got {type(method).__name__}"
    )


def _check_metrics(metrics: Sequence[Metric]) -> tuple[Metric, ...]:
    out = tuple(metrics)
    if not out:
        raise ValueError("give at least one metric")
    for m in out:
        if not isinstance(m, Metric):
            raise TypeError(
                f"metrics must be captum_ext.compare_metrics.Metric objects (a score and its direction), "
                f"got {type(m).__name__}: wrap a function as Metric(name, score, higher_is_better=...)"
            )
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique, got {names}")
    return out


def _rng_devices(inputs: tuple[Tensor, ...]) -> list[int]:
    return sorted({x.device.index or 0 for x in inputs if x.device.type == "cuda"})


def _per_example(values: Any, n: int, where: str) -> Tensor:
    t = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values, dtype=torch.float64)
    t = t.cpu().reshape(-1)
    if t.numel() != n:
        raise ValueError(
            f"{where} returned {t.numel()} values for {n} examples; a metric must return one per example"
        )
    return t


def compare_attributions(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    methods: Mapping[str, MethodLike] | Sequence[MethodLike],
    metrics: Sequence[Metric],
    *,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    max_examples_per_batch: int | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    show_progress: bool = False,
) -> Comparison:
    """Score several attribution methods with several metrics and compare them with paired intervals.

    Every method explains the same examples; every metric gives one score per example and method;
    the examples are then resampled ``n_boot`` times -- the same resamples for every method, a
    *paired* bootstrap -- to give a percentile interval of each method's mean score and of every
    difference between two methods. A difference is *significant* when its interval excludes 0, and
    a method's rank is 1 + the number of methods significantly better than it (direction from each
    metric's ``higher_is_better``). With fewer than 20 examples the intervals are too narrow (the
    percentile bootstrap undercovers) and a ``RuntimeWarning`` says so.

    Args:
        forward_func: the model (or any callable returning ``(N, classes)`` scores); not modified.
        inputs: tensor or tuple of tensors, batch first (the examples being compared).
        methods: ``{name: method}`` or a list of methods (named by class or function name). A
            method is a Captum attribution object (``Saliency(model)``, ``NoiseTunnel(CASO(model))``;
            its ``attribute`` is called), a callable ``(inputs, target) -> attributions``, or
            precomputed attributions shaped like ``inputs``.
        metrics: :class:`~captum_ext.compare_metrics.Metric` objects, e.g.
            :func:`~captum_ext.compare_metrics.infidelity_metric` (Captum's, normalised),
            :func:`~captum_ext.compare_metrics.pixel_perturbation_metric`.
        target: explained classes in any Captum form; ``None``: the model's predictions.
        additional_forward_args: extra forward arguments (Captum convention), passed to the model,
            to attribution objects and to the metrics.
        max_examples_per_batch: examples per attribution call (``None``: all at once).
        n_boot: bootstrap resamples (``>= 100``).
        confidence: coverage of the intervals, in ``(0, 1)``.
        seed: seeds the bootstrap and, for each method and metric, torch's generators (restored
            afterwards), so noisy methods and metrics give the same numbers on every run.
        show_progress: a tqdm progress bar over methods and metrics.

    Returns:
        A :class:`~captum_ext.compare_result.Comparison` with per-example ``scores``, means and
        intervals, ``ranks()``, ``pairs()``, ``to_dict()``, ``to_markdown()`` and ``plot()``.

    Raises:
        ValueError: fewer than two methods, no metric, duplicate names, a metric returning the
            wrong number of values, fewer than two examples with finite scores, bad ``n_boot`` /
            ``confidence``, a train-mode model.
        TypeError: a method or metric of the wrong kind.

    Examples:
        >>> from captum.attr import InputXGradient, Saliency
        >>> from captum_ext.compare_metrics import infidelity_metric
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x = torch.randn(20, 6)
        >>> res = compare_attributions(net, x, [Saliency(net), InputXGradient(net)], [infidelity_metric()])
        >>> res.methods, res.scores.shape
        (('Saliency', 'InputXGradient'), torch.Size([2, 1, 20]))
        >>> sorted(res.ranks("infidelity").values())[0]
        1
    """
    named = _named(methods)
    mets = _check_metrics(metrics)
    if not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(
            f"n_boot must be an int >= 100 (intervals from fewer resamples are noise), got {n_boot}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    check_eval_mode(forward_func)
    tup, is_tuple = format_inputs(inputs)
    n = tup[0].shape[0]
    if n < 2:
        raise ValueError(f"a comparison needs at least two examples, got {n}")
    args = format_additional_args(additional_forward_args)
    tgt = resolve_target(forward_func, tup, target, args, max_examples_per_batch)
    fmt_inputs = tup if is_tuple else tup[0]

    from tqdm.auto import tqdm

    scores = torch.full((len(named), len(mets), n), math.nan, dtype=torch.float64)
    seconds = []
    bar = tqdm(total=len(named) * (1 + len(mets)), desc="compare", disable=not show_progress, leave=False)
    devices = _rng_devices(tup)
    try:
        for a, (name, method) in enumerate(named.items()):
            bar.set_postfix_str(f"{name}: attributions")
            explain = _explainer(method)
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                attrs = resolve_attributions(
                    method if explain is None else explain,
                    fmt_inputs,
                    tgt,
                    additional_forward_args=additional_forward_args if explain is not None else None,
                    max_examples_per_batch=max_examples_per_batch,
                )
            seconds.append(0.0 if explain is None else time.perf_counter() - t0)
            bar.update(1)
            maps = attrs if is_tuple else attrs[0]
            for k, metric in enumerate(mets):
                bar.set_postfix_str(f"{name}: {metric.name}")
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    values = metric.score(
                        forward_func,
                        fmt_inputs,
                        maps,
                        target=tgt,
                        additional_forward_args=additional_forward_args,
                        explain=explain,
                    )
                scores[a, k] = _per_example(values, n, f"metric {metric.name!r} on {name!r}")
                bar.update(1)
    finally:
        bar.close()
    return _summarise(tuple(named), mets, scores, n_boot, confidence, seed, tuple(seconds))


def _summarise(
    names: tuple[str, ...],
    mets: tuple[Metric, ...],
    scores: Tensor,
    n_boot: int,
    confidence: float,
    seed: int,
    seconds: tuple[float, ...],
) -> Comparison:
    m, k_all = len(names), len(mets)
    mean = np.full((m, k_all), np.nan)
    interval = np.full((m, k_all, 2), np.nan)
    diff = np.full((k_all, m, m), np.nan)
    diff_iv = np.full((k_all, m, m, 2), np.nan)
    used = []
    for k, metric in enumerate(mets):
        s = scores[:, k].numpy()
        keep = np.isfinite(s).all(axis=0)
        n_keep = int(keep.sum())
        if n_keep < s.shape[1]:
            warnings.warn(
                f"metric {metric.name!r}: {s.shape[1] - n_keep} of {s.shape[1]} examples have a NaN or "
                f"infinite score for some method and are left out of its means and intervals (for "
                f"leakage: an all-zero map)",
                RuntimeWarning,
                stacklevel=3,
            )
        if n_keep < 2:
            raise ValueError(
                f"metric {metric.name!r}: fewer than two examples with finite scores for every method"
            )
        if n_keep < MIN_RELIABLE_EXAMPLES:
            warnings.warn(
                f"metric {metric.name!r}: percentile bootstrap intervals from {n_keep} examples are too "
                f"narrow (they cover less than {100 * confidence:g} % of the time below about "
                f"{MIN_RELIABLE_EXAMPLES} examples); compare on more examples before trusting a ranking",
                RuntimeWarning,
                stacklevel=3,
            )
        summary = paired_bootstrap(s[:, keep], n_boot, seed, confidence)
        mean[:, k], interval[:, k] = summary.mean, summary.interval
        diff[k], diff_iv[k] = summary.difference, summary.difference_interval
        used.append(n_keep)
    return Comparison(
        methods=names,
        metrics=tuple(x.name for x in mets),
        higher_is_better=tuple(x.higher_is_better for x in mets),
        scores=scores,
        n_examples=tuple(used),
        mean=torch.from_numpy(mean),
        interval=torch.from_numpy(interval),
        difference=torch.from_numpy(diff),
        difference_interval=torch.from_numpy(diff_iv),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        seconds=seconds,
    )
