"""Attribution evaluation metrics in the shape of ``captum.metrics``.

One convention for every metric (Captum's): ``metric(forward_func, inputs, attributions, *,
target=None, additional_forward_args=None, baselines=..., max_examples_per_batch=None, ...,
show_progress=False)``; tuple inputs, per-example baselines, per-example values as tensors beside the
aggregated curve, and a frozen result dataclass with ``to_dict()``, ``plot(ax=None)`` and a one-line
``repr``. NaN/infinite, empty and 1-D data are refused; a model with Dropout or normalisation running
statistics in training mode is refused (``ValueError``); no metric changes the model. The contract of
each metric is recorded in :mod:`captum_ext.metrics._registry`, from which its tests are generated.

* :func:`diff_roar` -- DiffROAR curves (top-k minus bottom-k remove-and-retrain), Shah et al.
  (:func:`diff_roar_without_retraining`: the App. C variant; :class:`ExecutionOptions`: where the
  retrainings run, cached or not);
* :func:`pixel_perturbation` -- discriminative pixel perturbation (accuracy), Srinivas & Fleuret;
* :func:`feature_leakage` -- attribution share outside a known per-instance signal;
* :func:`density_ratio_curve` -- how models score noisy inputs (Srinivas & Fleuret 5.1.1);
* sanity and robustness checks (Gong et al., supplement): :func:`model_randomization`,
  :func:`data_randomization`, :func:`topk_intersection`, :func:`attribution_attack`,
  :func:`stability`, :func:`aopc`, :func:`relative_fidelity_drop`;
* sample quality (Srinivas & Fleuret 5.1.2): :func:`class_conditional_samples`, :func:`gan_test`.
"""

from .._runner import ExecutionOptions
from ._common import MetricResult
from ._masking import DIFF_ROAR_FRACTIONS, count_for_fraction, unmask
from .diff_roar import DiffROARResult, diff_roar, diff_roar_without_retraining
from .leakage import LeakageResult, feature_leakage
from .pixel_perturbation import PixelPerturbationResult, pixel_perturbation

__all__ = [
    "DIFF_ROAR_FRACTIONS",
    "DiffROARResult",
    "ExecutionOptions",
    "LeakageResult",
    "MetricResult",
    "PixelPerturbationResult",
    "count_for_fraction",
    "diff_roar",
    "diff_roar_without_retraining",
    "feature_leakage",
    "pixel_perturbation",
    "unmask",
]

# sanity checks, robustness, fidelity and sample quality (Gong et al.; Srinivas & Fleuret 5.1)
from .density import DensityRatioCurve, density_ratio_curve  # noqa: E402
from .fidelity import AOPCResult, FidelityDrop, aopc, relative_fidelity_drop  # noqa: E402
from .robustness import AttackResult, SimilarityResult, attribution_attack, stability  # noqa: E402
from .samples import ClassSamples, GANTestResult, class_conditional_samples, gan_test  # noqa: E402
from .sanity import RandomizationResult, data_randomization, model_randomization  # noqa: E402
from .similarity import (  # noqa: E402
    normalize_maps,
    rank_average,
    saliency_map,
    spearman,
    ssim,
    topk_intersection,
)

__all__ += [
    "AOPCResult",
    "AttackResult",
    "ClassSamples",
    "DensityRatioCurve",
    "FidelityDrop",
    "GANTestResult",
    "RandomizationResult",
    "SimilarityResult",
    "aopc",
    "attribution_attack",
    "class_conditional_samples",
    "data_randomization",
    "density_ratio_curve",
    "gan_test",
    "model_randomization",
    "normalize_maps",
    "rank_average",
    "relative_fidelity_drop",
    "saliency_map",
    "spearman",
    "ssim",
    "stability",
    "topk_intersection",
]
