"""End-to-end demo: train, explain, compare CASO with CAFO, score -- on real handwritten digits, offline.

Run ``python -m captum_ext.demo`` (or ``captum-ext demo``; ``--help`` lists the options). It

1. builds BlockMNIST from scikit-learn's bundled real digits (no download): 56x28 images whose
   *signal* block holds the digit (all ten classes) and whose *null* block holds a fixed patch;
2. trains a small piecewise-linear CNN on it;
3. computes Saliency, IntegratedGradients, SmoothGrad (``NoiseTunnel(Saliency)``), CAFO and CASO
   (``lambda1 = 0``), sparse CASO and SmoothCASO (``lambda1`` per image by the CASO paper's
   sparsity rule) for every scored test image;
4. measures how far CASO is from CAFO per image (the paper's Fig. 1: they coincide at high
   confidence) with the demo's ``c1`` and the paper's, and picks the images where they differ
   most, plus a confident one, for the figure;
5. scores every method (against a random ranking) per image with discriminative pixel
   perturbation, DiffROAR without retraining and leakage, through
   :func:`~captum_ext.compare_attributions` (paired bootstrap intervals, significance-aware ranks);
6. writes ``attributions.png``, ``caso_vs_cafo.png``, ``metrics.png``, ``report.md`` and
   ``results.json`` into the output folder and names it at the end.

Everything is seeded: the same seed, mode, device and thread count (``--threads``, default 1)
give the same numbers. ``--quick`` is a smoke test on small subsets, ``--full`` explains more
images with a longer-trained model.

One module per job: :mod:`~captum_ext.demo.config` (presets, pure), :mod:`~captum_ext.demo.compare`
(map distances and image selection, pure), :mod:`~captum_ext.demo.explain` (the maps),
:mod:`~captum_ext.demo.scoring` (the one :func:`~captum_ext.compare_attributions` call),
:mod:`~captum_ext.demo.figures`, :mod:`~captum_ext.demo.report` (Markdown, pure) and
:mod:`~captum_ext.demo.pipeline` (:func:`run_demo`, the plumbing). The command line lives in
:mod:`captum_ext.cli`.
"""

from .compare import by_confidence, map_difference, select_examples
from .config import (
    DEFAULT_OUT,
    METHODS,
    MODES,
    PAPER_C1,
    PAPER_SPARSITY_WINDOW,
    SPARSITY_WINDOW,
    DemoConfig,
    demo_cnn,
    resolve_device,
)
from .pipeline import DemoResult, MissingExtraError, run_demo
from .report import format_report

__all__ = [
    "DEFAULT_OUT",
    "METHODS",
    "MODES",
    "PAPER_C1",
    "PAPER_SPARSITY_WINDOW",
    "SPARSITY_WINDOW",
    "DemoConfig",
    "DemoResult",
    "MissingExtraError",
    "by_confidence",
    "demo_cnn",
    "format_report",
    "map_difference",
    "resolve_device",
    "run_demo",
    "select_examples",
]
