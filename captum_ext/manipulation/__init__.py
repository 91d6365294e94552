"""Gradient manipulation wrappers (Srinivas & Fleuret, Sec. 2 and App. A).

* :class:`SoftmaxShift` — add one scalar function to every logit: probabilities, losses and
  loss-gradients unchanged, logit-gradients moved at will (``add_pattern``, ``paint``).
* :class:`LossGradientManipulation` — add a high-frequency sine to the loss (App. A.1): losses move by
  at most ε, loss-gradients by up to m·ε per coordinate.
* :func:`check_equivalence` — are two models discriminatively equivalent, and how far apart are
  their gradients?

**What a painted picture looks like in Captum.** After ``SoftmaxShift.paint(model, t, M)`` the logit
of class ``t`` is ``⟨M, x⟩``. Methods that return a (modified) gradient show the picture ``M`` itself;
methods that multiply by the input, or compare with a zero baseline, show ``M ⊙ x``. Measured
(float64, a ReLU CNN, equal to rounding) by ``tests/test_manipulation_captum.py``, one test per
method, which also checks this table:

.. begin generated table (tests/test_manipulation_captum.py)

=====================================================  =========
Captum method (target = painted class)                 returns
=====================================================  =========
``Saliency`` (``abs=False``)                           ``M``
``GuidedBackprop``                                     ``M``
``Deconvolution``                                      ``M``
``NoiseTunnel(Saliency)`` (SmoothGrad, ``abs=False``)  ``M``
``InputXGradient``                                     ``M ⊙ x``
``DeepLift`` (zero baseline)                           ``M ⊙ x``
``IntegratedGradients`` (zero baseline)                ``M ⊙ x``
``GradientShap`` (zero baselines)                      ``M ⊙ x``
``FeatureAblation`` (zero baseline)                    ``M ⊙ x``
=====================================================  =========

.. end generated table
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
