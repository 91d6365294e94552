"""Training-time regularizers as model wrappers (DESIGN.md section 5).

Every wrapper is an :class:`torch.nn.Module` whose ``forward`` returns the wrapped model's logits
unchanged, whose ``loss(x, y)`` returns the training loss and records its parts in ``last_parts``, and
whose ``.model`` is the plain model. Wrappers nest to combine penalties.
"""

from .activations import relu_to_softplus
from .adversarial import (
    AttentionHarmonizedTraining,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
)
from .attacks import (
    attention_perturbation,
    closed_form_perturbation,
    elastic_penalty,
    group_norms,
    norm_regularized_perturbation,
    pgd_perturbation,
)
from .base import RegularizedModel, unwrap
from .diagnostics import HessianTrace, hessian_trace
from .monitor import DeadUnitMonitor
from .penalties import InputGradientPenalty, WeightPenalty
from .score_matching import (
    AntiScoreMatching,
    GradientNormRegularizer,
    ScoreMatching,
    taylor_trace,
)

__all__ = [
    "RegularizedModel",
    "unwrap",
    "ScoreMatching",
    "AntiScoreMatching",
    "GradientNormRegularizer",
    "taylor_trace",
    "hessian_trace",
    "HessianTrace",
    "InputGradientPenalty",
    "WeightPenalty",
    "PGDAdversarialTraining",
    "NormRegularizedAdversarialTraining",
    "AttentionHarmonizedTraining",
    "pgd_perturbation",
    "norm_regularized_perturbation",
    "closed_form_perturbation",
    "attention_perturbation",
    "elastic_penalty",
    "group_norms",
    "relu_to_softplus",
    "DeadUnitMonitor",
]
