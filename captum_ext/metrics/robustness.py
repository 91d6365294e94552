"""Robustness and stability of attributions (Gong et al., 2024, supplement B.6-B.7, C.2.7).

* :func:`topk_intersection` (re-exported from :mod:`captum_ext.metrics.similarity`) — overlap of the
  top-k features, ``k`` = 40% of the reference's non-zero features by default;
* :func:`attribution_attack` — Ghorbani et al.'s (2019) top-k attack: an iterative, L2-bounded input
  perturbation that pushes attribution mass out of the original top-k region while the model's
  prediction stays the same; the smaller the resulting top-k intersection, the more fragile the
  attribution;
* :func:`stability` — attributions of two models trained alike (different seeds or data, B.7)
  compared per example.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext._autograd import input_gradient
from captum_ext._format import (
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from captum_ext.attr.gradient_saliency import gradient_saliency
from captum_ext.metrics._common import (
    NOT_IN_DICT,
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    compute_attributions,
    explainer_for,
    resolve_target,
)
from captum_ext.metrics._masking import relevance_scores
from captum_ext.metrics._validate import FRACTION, POSITIVE, POSITIVE_INT, validate
from captum_ext.metrics.sanity import ExplainerLike
from captum_ext.metrics.similarity import (
    AttrLike,
    check_metrics,
    compare_attributions,
    settle_metrics,
    spearman,
    topk_intersection,
    topk_sizes,
)
from captum_ext.regularizers.activations import relu_to_softplus

__all__ = [
    "AttackResult",
    "SimilarityResult",
    "attribution_attack",
    "stability",
    "topk_intersection",
]

SaliencyFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------
# Differentiable saliency used by the attack


def _pixel_map(s: Tensor) -> Tensor:
    """Per-example flat map (differentiable): |s| summed over the channels of 4-d inputs (pixel
    level), else |s| per coordinate -- the masking engine's ``"abs_sum"`` / ``"abs"``."""
    return relevance_scores(s, "abs_sum" if s.dim() == 4 else "abs")


@dataclass(frozen=True, eq=False, repr=False)
class AttackResult(MetricResult):
    """Outcome of :func:`attribution_attack`.

    Attributes:
        perturbed: the attacked inputs ``x + delta`` (same shape as the inputs).
        delta_norm: ``(N,)`` L2 norm of each perturbation (at most ``epsilon``).
        topk_intersection: ``(N,)`` overlap of the top-k pixels before and after the attack
            (1 means the attack found nothing better than leaving the input as it was).
        spearman: ``(N,)`` rank correlation of the maps before and after.
        prediction_kept: ``(N,)`` bool, the model's arg-max class is unchanged (always true: only
            label-preserving perturbations are accepted).
        original_maps: ``(N, P)`` saliency before the attack (pixel level).
        attacked_maps: ``(N, P)`` saliency after the attack.
        target: ``(N,)`` explained classes.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> res = attribution_attack(net, torch.rand(4, 16), epsilon=1.0, steps=10)
        >>> bool(res.prediction_kept.all()), bool((res.delta_norm <= 1.0 + 1e-6).all())
        (True, True)
        >>> res.mean()["topk_intersection"] < 1.0  # the attack moved the top-k pixels
        True
        >>> sorted(res.to_dict())
        ['delta_norm', 'prediction_kept', 'spearman', 'topk_intersection']
    """

    perturbed: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    delta_norm: Tensor
    topk_intersection: Tensor
    spearman: Tensor
    prediction_kept: Tensor
    original_maps: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    attacked_maps: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    target: Tensor = field(repr=False, metadata=NOT_IN_DICT)

    def plot(self, ax: Any = None, bins: int = 20) -> Any:
        """Histogram of the per-example top-k intersection after the attack; returns the Axes."""
        ax = self._axes(ax, (4, 3))
        vals = self.topk_intersection[~torch.isnan(self.topk_intersection)].cpu().numpy()
        ax.hist(vals, bins=bins, range=(0.0, 1.0), alpha=0.7)
        ax.set_xlabel("top-k intersection after the attack")
        ax.set_ylabel("examples")
        return ax

    def mean(self) -> dict[str, float]:
        """Mean top-k intersection and Spearman correlation (NaN examples ignored)."""
        return {
            "topk_intersection": float(torch.nanmean(self.topk_intersection.double())),
            "spearman": float(torch.nanmean(self.spearman.double())),
        }


@log_usage()
def attribution_attack(
    forward_func: nn.Module,
    inputs: Tensor,
    attribution: str | SaliencyFn = "gradient",
    *,
    target: TargetLike = None,
    epsilon: float = 0.5,
    steps: int = 50,
    step_size: float | None = None,
    topk_fraction: float = 0.4,
    surrogate: nn.Module | None = None,
    surrogate_beta: float = 10.0,
    clip: tuple[float, float] | None = None,
    additional_forward_args: Any = None,
    max_examples_per_batch: int | None = None,
    show_progress: bool = False,
) -> AttackResult:
    """Top-k attribution attack of Ghorbani et al. (2019) under an L2 budget.

    For each example the pixel-level saliency map ``s(x)`` (absolute attribution, channels
    summed) defines the top-k set ``K`` (``k`` = ``topk_fraction`` of its non-zero pixels). Starting
    from ``delta = 0``, every step moves ``delta`` along the normalised negative gradient of the
    share of saliency mass inside ``K``,

        D(x + delta) = sum_{i in K} s_i(x + delta) / sum_i s_i(x + delta),

    projects it back onto the L2 ball of radius ``epsilon`` (and the ``clip`` box), and checks the
    real model: a step is kept as the current best only if the predicted class is unchanged and the
    top-k intersection with the original map decreased; a step that flips the prediction is undone.
    The result holds the best label-preserving perturbation per example.

    ReLU networks have zero second derivatives almost everywhere, so the attack direction is
    computed on a *surrogate* (Ghorbani et al.): by default a copy of the model with every
    ``nn.ReLU`` module replaced by ``nn.Softplus(beta=surrogate_beta)``; scores and predictions
    always come from the real model. (Functional ``F.relu`` calls cannot be swapped: pass your own
    ``surrogate`` for such models.)

    Args:
        forward_func: the classifier, an ``nn.Module`` (never modified; the surrogate is a deep copy).
        inputs: ``(N, ...)`` tensor (e.g. ``(N, C, H, W)`` images).
        attribution: ``"gradient"`` (simple gradient, as in Gong et al.), ``"gradient_x_input"`` or
            a differentiable callable ``f(model, x, target) -> attributions`` that builds its graph
            with ``create_graph=True``.
        target: the explained classes; ``None`` uses the predictions on the clean inputs.
        epsilon: L2 radius of the perturbation, per example.
        steps: attack iterations.
        step_size: L2 length of each step (default ``2.5 * epsilon / steps``).
        topk_fraction: ``k`` as a fraction of the original map's non-zero pixels (B.6: 0.4).
        surrogate: the model used for the attack direction (default: the softplus copy).
        surrogate_beta: softplus sharpness of the default surrogate.
        clip: ``(low, high)`` box for the perturbed inputs (e.g. ``(0, 1)`` for images).
        additional_forward_args: extra forward arguments of the model.
        max_examples_per_batch: examples attacked together (``None``: all at once).
        show_progress: tqdm progress bar over steps.

    Returns:
        :class:`AttackResult`.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> res = attribution_attack(net, torch.rand(4, 6), epsilon=0.1, steps=3)
        >>> res.topk_intersection.shape, bool((res.delta_norm <= 0.1 + 1e-6).all())
        (torch.Size([4]), True)
    """
    model = forward_func
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_func must be an nn.Module, got {type(model).__name__}")
    check_eval_mode(model)
    if isinstance(inputs, tuple) or not isinstance(inputs, Tensor):
        raise TypeError(
            "attribution_attack takes a single input tensor (batch first; the L2 budget is over it): "
            f"tuple inputs are not supported, got {type(inputs).__name__}"
        )
    check_data(inputs)
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point, got {inputs.dtype}")
    validate(epsilon=(epsilon, POSITIVE), steps=(steps, POSITIVE_INT))
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    validate(step_size=(step_size, POSITIVE))
    validate(topk_fraction=(topk_fraction, FRACTION))
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
    if attribution in ("gradient", "gradient_x_input"):
        times_input = attribution == "gradient_x_input"

        def sal(m: nn.Module, x: Tensor, t: Tensor, graph: bool, args: tuple) -> Tensor:
            return gradient_saliency(
                m, x, t, times_input=times_input, create_graph=graph, additional_args=args
            )
    elif callable(attribution):
        user_fn = attribution

        def sal(m: nn.Module, x: Tensor, t: Tensor, graph: bool, args: tuple) -> Tensor:
            out = user_fn(m, x, t)
            if not isinstance(out, Tensor) or out.shape != x.shape:
                raise ValueError("the attribution callable must return a tensor shaped like x")
            return out
    else:
        raise ValueError(
            "attribution must be 'gradient', 'gradient_x_input' or a callable "
            f"f(model, x, target); got {attribution!r}"
        )
    check_batch_size(max_examples_per_batch)
    batch_size = max_examples_per_batch
    if surrogate is None:
        surrogate = relu_to_softplus(model, beta=surrogate_beta)
    elif not isinstance(surrogate, nn.Module):
        raise TypeError("surrogate must be an nn.Module")
    else:
        check_eval_mode(surrogate, "surrogate")
    args = format_additional_args(additional_forward_args)
    n = inputs.shape[0]
    x_all = inputs.detach()
    if clip is not None and ((x_all < clip[0]).any() or (x_all > clip[1]).any()):
        raise ValueError(f"inputs lie outside the clip box {clip}")
    tgt = resolve_target(model, (x_all,), target, args, batch_size)
    bs = n if batch_size is None else batch_size

    from tqdm.auto import tqdm

    n_chunks = (n + bs - 1) // bs
    bar = tqdm(total=n_chunks * steps, desc="attribution attack", disable=not show_progress, leave=False)
    results: list[tuple[Tensor, ...]] = []
    try:
        for start in range(0, n, bs):
            idx = torch.arange(start, min(start + bs, n), device=x_all.device)
            results.append(
                _attack_chunk(
                    model,
                    surrogate,
                    sal,
                    x_all[idx],
                    tgt[idx],
                    select_additional_args(args, n, idx),
                    epsilon,
                    steps,
                    step_size,
                    topk_fraction,
                    clip,
                    bar,
                )
            )
    finally:
        bar.close()
    perturbed, s0, s_best, score, kept = (torch.cat(p, dim=0) for p in zip(*results, strict=True))
    delta_norm = (perturbed - x_all).reshape(n, -1).norm(dim=1)
    rho = spearman(s0, s_best) if s0.shape[1] > 1 else torch.full_like(score, float("nan"))
    return AttackResult(
        perturbed=perturbed,
        delta_norm=delta_norm,
        topk_intersection=score,
        spearman=rho,
        prediction_kept=kept,
        original_maps=s0,
        attacked_maps=s_best,
        target=tgt,
    )


def _attack_chunk(
    model: nn.Module,
    surrogate: nn.Module,
    sal: Callable[..., Tensor],
    x0: Tensor,
    t: Tensor,
    args: tuple[Any, ...],
    epsilon: float,
    steps: int,
    step_size: float,
    fraction: float,
    clip: tuple[float, float] | None,
    bar: Any,
) -> tuple[Tensor, ...]:
    m = x0.shape[0]
    shape = (m,) + (1,) * (x0.dim() - 1)

    def real_map(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = sal(model, xr, t, False, args).detach()
        with torch.no_grad():
            pred = run_forward(model, (x,), args).argmax(dim=1)
        return _pixel_map(s), pred

    s0, pred0 = real_map(x0)
    kk = topk_sizes(s0, fraction=fraction)
    order = torch.sort(s0, dim=1, descending=True, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(s0.shape[1], device=s0.device).expand_as(order))
    region = (position < kk.view(-1, 1)).to(x0.dtype)  # original top-k pixels

    delta = torch.zeros_like(x0)
    best_delta = torch.zeros_like(x0)
    best_score = torch.where(
        kk > 0,
        torch.ones(m, dtype=torch.float64, device=x0.device),
        torch.full((m,), float("nan"), dtype=torch.float64, device=x0.device),
    )
    best_map = s0.clone()
    tiny = torch.finfo(x0.dtype).tiny
    for _ in range(steps):
        with torch.enable_grad():
            xa = (x0 + delta).detach().requires_grad_(True)
            s = _pixel_map(sal(surrogate, xa, t, True, args))
            share = (s * region).sum(dim=1) / s.sum(dim=1).clamp_min(tiny)
            (g,) = input_gradient(share.sum(), (xa,))
        with torch.no_grad():
            gn = g.reshape(m, -1).norm(dim=1).view(shape)
            direction = torch.where(gn > 0, -g / gn.clamp_min(tiny), torch.zeros_like(g))
            delta = delta + step_size * direction
            norm = delta.reshape(m, -1).norm(dim=1).view(shape)
            delta = delta * torch.clamp(epsilon / norm.clamp_min(tiny), max=1.0)
            if clip is not None:
                delta = (x0 + delta).clamp(clip[0], clip[1]) - x0
        s_new, pred = real_map(x0 + delta)
        with torch.no_grad():
            score = topk_intersection(s0, s_new, fraction=fraction).to(torch.float64)
            same = pred == pred0
            better = same & (score < best_score)
            best_delta[better] = delta[better]
            best_score = torch.where(better, score, best_score)
            best_map[better] = s_new[better]
            delta[~same] = best_delta[~same]  # undo steps that flip the prediction
        bar.update(1)
    with torch.no_grad():
        perturbed = x0 + best_delta
        kept = run_forward(model, (perturbed,), args).argmax(dim=1) == pred0
    return perturbed, s0, best_map, best_score.to(x0.dtype), kept


# ----------------------------------------------------------------------------------------------
# Stability across retrainings


@dataclass(frozen=True, eq=False, repr=False)
class SimilarityResult(MetricResult):
    """Per-example similarity of two attribution batches.

    Attributes:
        scores: metric name -> ``(N,)`` tensor.
        attributions: ``(attributions_a, attributions_b)`` when requested.

    Examples:
        Two linear models of different seeds: the saliency of a linear model is its weight row, the
        same for every example, so all examples score alike.

        >>> from captum.attr import Saliency
        >>> _ = torch.manual_seed(0)
        >>> a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        >>> res = stability(a, torch.rand(4, 5), Saliency, other_forward_func=b, target=0)
        >>> sorted(res.scores), res.scores["topk"].shape
        (['spearman', 'topk'], torch.Size([4]))
        >>> res.mean()
        {'spearman': 0.0, 'topk': 0.5}
    """

    scores: dict[str, Tensor]
    attributions: tuple[AttrLike, AttrLike] | None = field(default=None, repr=False, metadata=NOT_IN_DICT)

    def mean(self) -> dict[str, float]:
        """Mean of each metric over examples (NaN examples ignored)."""
        return {k: float(torch.nanmean(v.double())) for k, v in self.scores.items()}

    def plot(self, ax: Any = None) -> Any:
        """Box plot of the per-example similarity for each metric; returns the Axes."""
        ax = self._axes(ax, (4, 3))
        names = list(self.scores)
        data = [v[~torch.isnan(v)].double().cpu().numpy() for v in self.scores.values()]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names)
        ax.set_ylabel("similarity across trainings")
        return ax


@log_usage()
def stability(
    forward_func: nn.Module,
    inputs: TensorOrTuple,
    explainer: ExplainerLike,
    *,
    other_forward_func: nn.Module,
    target: TargetLike = None,
    metrics: Sequence[str] | None = None,
    absolute: bool = True,
    topk_fraction: float = 0.4,
    ssim_kwargs: dict[str, Any] | None = None,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    max_examples_per_batch: int | None = None,
    return_attributions: bool = False,
) -> SimilarityResult:
    """Stability of an attribution method across two trainings (Gong et al., B.7).

    ``forward_func`` and ``other_forward_func`` are the same architecture trained with the same recipe but a
    different seed (and, in B.7, a slightly different training set: swap some training examples
    for held-out ones). Their attributions on common test ``inputs`` are compared per example with
    top-k intersection (``k`` = 40% of ``forward_func``'s non-zero features), Spearman rank correlation
    and, for image attributions, SSIM. Identical models score 1.

    Args:
        forward_func: first model (the reference for ``k``), an ``nn.Module``; never modified.
        inputs: the common test examples, batch first.
        explainer: a Captum Attribution class or a factory ``model -> attribute_fn``.
        other_forward_func: the second model (another training run); never modified.
        target: classes to explain for both models (e.g. the true labels); ``None`` uses
            ``forward_func``'s predictions.
        metrics: subset of ``("ssim", "spearman", "topk")`` (``None``: all that apply).
        absolute: compare absolute attributions.
        topk_fraction: fraction of non-zero features in the top-k set.
        ssim_kwargs: keyword arguments for the SSIM.
        additional_forward_args: extra forward arguments.
        attribute_kwargs: extra keyword arguments of the attribution function.
        max_examples_per_batch: examples per attribution call (``None``: all at once).
        return_attributions: keep both attribution batches.

    Returns:
        :class:`SimilarityResult` with ``scores[metric]`` of shape ``(N,)``.

    Examples:
        >>> from captum.attr import Saliency
        >>> net = torch.nn.Linear(5, 3)
        >>> res = stability(net, torch.rand(4, 5), Saliency, other_forward_func=net, target=0)
        >>> res.mean()["topk"]
        1.0
    """
    for name, mdl in (("forward_func", forward_func), ("other_forward_func", other_forward_func)):
        if not isinstance(mdl, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(mdl).__name__}")
        check_eval_mode(mdl, name)
    mets = check_metrics(metrics)
    check_batch_size(max_examples_per_batch)
    batch_size = max_examples_per_batch
    tup, _ = format_inputs(inputs)
    check_data(tup)
    args = format_additional_args(additional_forward_args)
    copy_a, copy_b = copy.deepcopy(forward_func), copy.deepcopy(other_forward_func)
    tgt = resolve_target(copy_a, tup, target, args, batch_size)
    attrs = []
    for m in (copy_a, copy_b):
        attrs.append(
            compute_attributions(
                explainer_for(explainer, m),
                inputs,
                tgt,
                additional_forward_args=additional_forward_args,
                attribute_kwargs=attribute_kwargs,
                max_examples_per_batch=batch_size,
            )
        )
    mets = settle_metrics(mets, attrs[0], ssim_kwargs)
    scores = compare_attributions(
        attrs[0], attrs[1], mets, absolute=absolute, topk_fraction=topk_fraction, ssim_kwargs=ssim_kwargs
    )
    return SimilarityResult(scores=scores, attributions=(attrs[0], attrs[1]) if return_attributions else None)
