"""captum_ext: second-order attributions, gradient manipulation, attribution metrics and gradient
regularizers for Captum users. Public names only; no logic here.

Subpackages: :mod:`captum_ext.attr` (CASO, CAFO, SmoothCASO), :mod:`captum_ext.manipulation`,
:mod:`captum_ext.metrics` (and :func:`compare_attributions` with its metrics in
:mod:`captum_ext.compare_metrics`), :mod:`captum_ext.regularizers`, :mod:`captum_ext.datasets`,
:mod:`captum_ext.training`, :mod:`captum_ext.visualization`.
"""

from .attr import CAFO, CASO, AttributionDetails, SmoothCASO
from .compare import compare_attributions
from .manipulation import LossGradientManipulation, SoftmaxShift, check_equivalence
from .metrics import (
    ExecutionOptions,
    aopc,
    attribution_attack,
    class_conditional_samples,
    data_randomization,
    density_ratio_curve,
    diff_roar,
    diff_roar_without_retraining,
    feature_leakage,
    gan_test,
    model_randomization,
    pixel_perturbation,
    relative_fidelity_drop,
    stability,
    topk_intersection,
)
from .regularizers import (
    AntiScoreMatching,
    AttentionHarmonizedTraining,
    GradientNormRegularizer,
    InputGradientPenalty,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
    ScoreMatching,
    WeightPenalty,
    hessian_trace,
    relu_to_softplus,
    taylor_trace,
)

__version__ = "0.1.0"

__all__ = [
    "CASO",
    "CAFO",
    "SmoothCASO",
    "AttributionDetails",
    "SoftmaxShift",
    "LossGradientManipulation",
    "check_equivalence",
    "diff_roar",
    "diff_roar_without_retraining",
    "ExecutionOptions",
    "pixel_perturbation",
    "feature_leakage",
    "density_ratio_curve",
    "model_randomization",
    "data_randomization",
    "topk_intersection",
    "attribution_attack",
    "aopc",
    "relative_fidelity_drop",
    "stability",
    "class_conditional_samples",
    "gan_test",
    "compare_attributions",
    "ScoreMatching",
    "AntiScoreMatching",
    "GradientNormRegularizer",
    "taylor_trace",
    "hessian_trace",
    "InputGradientPenalty",
    "WeightPenalty",
    "PGDAdversarialTraining",
    "NormRegularizedAdversarialTraining",
    "AttentionHarmonizedTraining",
    "relu_to_softplus",
    "__version__",
]
