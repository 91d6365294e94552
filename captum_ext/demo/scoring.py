"""Every call of the demo into :mod:`captum_ext.metrics`, returning JSON-friendly numbers.

Kept in one module so that a change of the metrics API touches the demo in one place only.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["diff_roar_scores", "leakage", "pixel_perturbation_scores"]


def leakage(inputs: Tensor, maps: dict[str, Tensor], signal_masks: Tensor) -> dict[str, list[float]]:
    """Per image and method, the share of ``|attribution|`` outside the signal block (Shah et al.)."""
    from ..metrics import feature_leakage

    return {name: feature_leakage(inputs, a, signal_masks).leakage.tolist() for name, a in maps.items()}


def pixel_perturbation_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    maps: dict[str, Tensor],
    fractions: tuple[float, ...],
    *,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Discriminative pixel perturbation (Srinivas & Fleuret) of every map: accuracy after the
    least relevant pixels are replaced by the image's mean value (ties broken at random with
    ``seed``)."""
    from ..metrics import pixel_perturbation

    res = {
        name: pixel_perturbation(
            model,
            x,
            a,
            target=y,
            baselines="mean",
            max_examples_per_batch=256,
            fractions=fractions,
            order="least",
            seed=seed,
            show_progress=progress,
        )
        for name, a in maps.items()
    }
    base = next(iter(res.values()))
    return {
        "n_images": int(x.shape[0]),
        "fractions": list(fractions),
        "order": "least",
        "fill": "mean",
        "baseline_accuracy": float(base.baseline_accuracy),
        "accuracy": {k: r.accuracy.tolist() for k, r in res.items()},
        "label_prob": {k: r.label_prob.tolist() for k, r in res.items()},
    }


def diff_roar_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    maps: dict[str, Tensor],
    fractions: tuple[float, ...],
    *,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """DiffROAR without retraining (Shah et al., App. C) of every map: accuracy of ``model`` with
    only the top-k minus with only the bottom-k pixels kept (the rest set to 0)."""
    from ..metrics import diff_roar

    res = {
        name: diff_roar(
            model,
            None,
            (x, y),
            (None, a),
            fractions=fractions,
            retrain=False,
            baselines=0.0,
            max_examples_per_batch=256,
            tie_seed=seed,
            show_progress=progress,
        )
        for name, a in maps.items()
    }
    return {
        "n_images": int(x.shape[0]),
        "fractions": list(fractions),
        "retrain": False,
        "fill": 0.0,
        "methods": {
            k: {"diff": r.diff.tolist(), "top": r.top.tolist(), "bottom": r.bottom.tolist()}
            for k, r in res.items()
        },
    }
