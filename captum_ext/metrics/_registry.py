"""The registry of every metric and what its contract promises (the contract tests are generated
from it, so a new metric is checked as soon as it is registered).

Every registered metric:

* takes ``forward_func`` first (except the model-free :func:`feature_leakage`, which takes
  ``inputs``), then its data parameters, then keyword-only options with Captum's names
  (``target``, ``additional_forward_args``, ``max_examples_per_batch=None``, ``show_progress=False``);
* refuses NaN / infinite, empty and 1-D data with a ``ValueError`` naming the fix;
* refuses a model with Dropout or normalisation running statistics in training mode, and never
  changes the model;
* accepts tuple inputs where :attr:`MetricSpec.tuple_inputs` says so (and refuses them clearly
  elsewhere);
* returns a frozen :class:`~captum_ext.metrics.MetricResult` with a compact ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .density import density_ratio_curve
from .diff_roar import diff_roar, diff_roar_without_retraining
from .fidelity import aopc, relative_fidelity_drop
from .leakage import feature_leakage
from .pixel_perturbation import pixel_perturbation
from .robustness import attribution_attack, stability
from .samples import class_conditional_samples, gan_test
from .sanity import data_randomization, model_randomization

__all__ = ["METRICS", "MetricSpec"]


@dataclass(frozen=True)
class MetricSpec:
    """What one metric's contract says.

    Attributes:
        fn: the metric.
        data: names of its positional data parameters after ``forward_func``.
        model: whether ``forward_func`` (a model) comes first.
        tuple_inputs: whether tuple inputs are accepted.
        long_running: whether it trains models or loops long (then it has ``show_progress``).
    """

    fn: Callable[..., Any]
    data: tuple[str, ...]
    model: bool = True
    tuple_inputs: bool = True
    long_running: bool = False


METRICS: dict[str, MetricSpec] = {
    "aopc": MetricSpec(aopc, ("inputs", "attributions")),
    "attribution_attack": MetricSpec(
        attribution_attack, ("inputs", "attribution"), tuple_inputs=False, long_running=True
    ),
    "class_conditional_samples": MetricSpec(
        class_conditional_samples, ("input_shape",), tuple_inputs=False, long_running=True
    ),
    "data_randomization": MetricSpec(
        data_randomization, ("inputs", "explainer"), tuple_inputs=False, long_running=True
    ),
    "density_ratio_curve": MetricSpec(density_ratio_curve, ("inputs", "sigmas")),
    "diff_roar": MetricSpec(
        diff_roar, ("train", "test", "attributions"), tuple_inputs=False, long_running=True
    ),
    "diff_roar_without_retraining": MetricSpec(
        diff_roar_without_retraining, ("test", "attributions"), tuple_inputs=False
    ),
    "feature_leakage": MetricSpec(feature_leakage, ("inputs", "attributions", "signal_masks"), model=False),
    "gan_test": MetricSpec(gan_test, ("inputs",), tuple_inputs=False),
    "model_randomization": MetricSpec(model_randomization, ("inputs", "explainer"), long_running=True),
    "pixel_perturbation": MetricSpec(pixel_perturbation, ("inputs", "attributions")),
    "relative_fidelity_drop": MetricSpec(
        relative_fidelity_drop, ("inputs", "base_attributions", "processed_attributions")
    ),
    "stability": MetricSpec(stability, ("inputs", "explainer")),
}
