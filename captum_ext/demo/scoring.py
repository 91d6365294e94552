"""Every call of the demo into the metrics: one :func:`~captum_ext.compare_attributions` run, returned
as JSON-friendly numbers, and the per-image leakage of the shown maps.

Kept in one module so that a change of the metrics API touches the demo in one place only. All three
metrics rank pixels by ``|attribution|``, so they do not depend on a method's sign convention.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .config import DemoConfig

__all__ = ["METRIC_NAMES", "compare_methods", "leakage"]

#: The demo's metrics, in the order of its tables (the names :func:`compare_methods` gives them).
METRIC_NAMES = ("pixel perturbation", "DiffROAR", "leakage")


def leakage(inputs: Tensor, maps: dict[str, Tensor], signal_masks: Tensor) -> dict[str, list[float]]:
    """Per image and method, the share of ``|attribution|`` outside the signal block (Shah et al.)."""
    from ..metrics import feature_leakage

    return {name: feature_leakage(inputs, a, signal_masks).leakage.tolist() for name, a in maps.items()}


def _metrics(masks: Tensor, cfg: DemoConfig, seed: int) -> list[Any]:
    from ..compare_metrics import Metric, diff_roar_metric, leakage_metric, pixel_perturbation_metric

    pix = pixel_perturbation_metric(
        cfg.pixel_fractions,
        order="least",
        baselines="mean",
        output="accuracy",
        seed=seed,
        max_examples_per_batch=256,
    )
    roar = diff_roar_metric(cfg.roar_fractions, baselines=0.0, seed=seed, max_examples_per_batch=256)
    leak = leakage_metric(masks)
    return [
        Metric(name, m.score, m.higher_is_better)
        for name, m in zip(METRIC_NAMES, (pix, roar, leak), strict=True)
    ]


def compare_methods(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    maps: dict[str, Tensor],
    masks: Tensor,
    cfg: DemoConfig,
    *,
    seed: int,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """Score every map with the demo's three metrics, per image, with paired bootstrap intervals.

    * *pixel perturbation* (Srinivas & Fleuret): per image, the share of ``cfg.pixel_fractions`` at
      which the prediction is still right after the least relevant pixels are replaced by the
      image's mean (higher is better);
    * *DiffROAR* without retraining (Shah et al., App. C): per image, hit with only the top-k pixels
      kept minus hit with only the bottom-k kept (rest 0), averaged over ``cfg.roar_fractions``
      (higher is better, a random map scores about 0);
    * *leakage* (Shah et al.): share of ``|attribution|`` outside the signal block (lower is better).

    Returns:
        ``(comparison, numbers)``: the :class:`~captum_ext.compare_result.Comparison` and its
        JSON-friendly summary (means, intervals, ranks, significant differences, the Markdown table,
        per-image scores).
    """
    from ..compare import compare_attributions

    res = compare_attributions(
        model, x, maps, _metrics(masks, cfg, seed), target=y, seed=seed, show_progress=progress
    )
    numbers = {
        "n_images": int(x.shape[0]),
        "methods": list(res.methods),
        "metrics": list(res.metrics),
        "higher_is_better": list(res.higher_is_better),
        "pixel_fractions": list(cfg.pixel_fractions),
        "roar_fractions": list(cfg.roar_fractions),
        "n_boot": res.n_boot,
        "seed": res.seed,
        "n_examples": list(res.n_examples),
        "mean": {
            m: {a: float(res.mean[i, k]) for i, a in enumerate(res.methods)}
            for k, m in enumerate(res.metrics)
        },
        "interval": {
            m: {a: [float(v) for v in res.interval[i, k]] for i, a in enumerate(res.methods)}
            for k, m in enumerate(res.metrics)
        },
        "ranks": {m: res.ranks(m) for m in res.metrics},
        "pairs": {
            m: [[p.better, p.worse, p.difference, p.low, p.high, p.significant] for p in res.pairs(m)]
            for m in res.metrics
        },
        "markdown": res.to_markdown(digits=3),
        "per_image": {
            m: {a: res.scores[i, k].tolist() for i, a in enumerate(res.methods)}
            for k, m in enumerate(res.metrics)
        },
    }
    return res, numbers
