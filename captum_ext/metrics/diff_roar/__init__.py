"""DiffROAR (Shah, Jain, Netrapalli, NeurIPS 2021, Sec. 3): top-k vs bottom-k remove-and-retrain.

``DiffROAR(A, k) = PredPower(A_k^top) - PredPower(A_k^bot)``, where *PredPower* is the test
accuracy of a model retrained on data in which only the ``k`` most (respectively least) relevant
coordinates of every example are kept. A random attribution gives 0 in expectation; an attribution
that ranks the discriminative coordinates first gives a large positive value.

**Leakage control.** The masks themselves can carry the label (an attribution at the true label
may put its top-k pixels in label-dependent places). :func:`diff_roar` therefore also retrains on
the binary kept-unit masks alone and warns, in plain words, when they predict the labels.

Modules: :mod:`.result` (:class:`DiffROARResult`, leakage threshold and message), :mod:`.cells`
(one retraining, the cache key), :mod:`.checks` (input checks), :mod:`.api` (the entry points).
Plumbing (cache, locks, executors) lives in :mod:`captum_ext._runner`, tensor maths in
:mod:`captum_ext.metrics._masking`.
"""

from .._masking import unmask
from .api import diff_roar, diff_roar_without_retraining
from .result import DiffROARResult

__all__ = ["DiffROARResult", "diff_roar", "diff_roar_without_retraining", "unmask"]
