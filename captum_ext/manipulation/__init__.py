"""Gradient manipulation wrappers (Srinivas & Fleuret, Sec. 2 and App. A).

* :class:`SoftmaxShift` — add one scalar function to every logit: probabilities, losses and
  loss-gradients unchanged, logit-gradients moved at will (``add_pattern``, ``paint``).
* :class:`LossGradientManipulation` — add a high-frequency sine to the loss (App. A.1): losses move by
  at most ε, loss-gradients by up to m·ε per coordinate.
* :func:`check_equivalence` — are two models discriminatively equivalent, and how far apart are
  their gradients?
"""

from .equivalence import EquivalenceReport, check_equivalence
from .loss_shift import LossGradientManipulation, sine_shift
from .softmax_shift import LinearShift, PaintShift, SoftmaxShift

__all__ = [
    "SoftmaxShift",
    "LinearShift",
    "PaintShift",
    "LossGradientManipulation",
    "sine_shift",
    "check_equivalence",
    "EquivalenceReport",
]
