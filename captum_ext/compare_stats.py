"""Paired bootstrap of per-example scores (pure numpy): intervals of means and of their differences.

The one resampling rule of :func:`captum_ext.compare_attributions`, written out so that anyone can
recompute an interval by hand: for ``N`` examples, ``B`` resamples and seed ``s``,

.. code-block:: python

    idx = numpy.random.default_rng(s).integers(0, N, size=(B, N))  # one draw, shared by all methods
    boot = scores[:, idx].mean(axis=-1)                              # (methods, B) resampled means
    low, high = numpy.percentile(boot[a] - boot[b], [2.5, 97.5])    # 95 % interval of mean(a - b)

The same resampled examples are used for every method (a *paired* bootstrap): the difference of two
methods on one example is what is resampled, so the variation between examples that both methods
share cancels. The interval is the percentile interval (numpy's default linear interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapSummary", "bootstrap_counts", "paired_bootstrap"]


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each example appears in each resample.

    Args:
        n: number of examples (``>= 1``).
        n_boot: number of resamples (``>= 1``).
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(n_boot, n)`` float64 counts; row ``b`` counts the draw
        ``default_rng(seed).integers(0, n, size=(n_boot, n))[b]`` (each row sums to ``n``).

    Examples:
        >>> bootstrap_counts(3, 2, seed=0).sum(axis=1).tolist()
        [3.0, 3.0]
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


@dataclass(frozen=True)
class BootstrapSummary:
    """Means, their intervals and every pairwise difference with its interval (one metric).

    Attributes:
        mean: ``(M,)`` mean score of each method.
        interval: ``(M, 2)`` percentile interval of each mean.
        difference: ``(M, M)`` ``mean[a] - mean[b]`` (the mean of the paired differences).
        difference_interval: ``(M, M, 2)`` percentile interval of ``mean(score[a] - score[b])``.

    Examples:
        >>> out = paired_bootstrap(np.array([[1.0, 3.0], [0.0, 2.0]]), n_boot=100, seed=0)
        >>> out.mean.tolist(), out.difference.tolist()
        ([2.0, 1.0], [[0.0, 1.0], [-1.0, 0.0]])
    """

    mean: np.ndarray
    interval: np.ndarray
    difference: np.ndarray
    difference_interval: np.ndarray


def paired_bootstrap(
    scores: np.ndarray, n_boot: int, seed: int, confidence: float = 0.95
) -> BootstrapSummary:
    """Paired percentile bootstrap of the means of ``scores`` and of all their differences.

    Args:
        scores: ``(M, N)`` finite per-example scores of ``M`` methods on the same ``N`` examples.
        n_boot: number of resamples.
        seed: seed of the resampling (see the module docstring for the exact draw).
        confidence: coverage of the intervals, in ``(0, 1)``.

    Returns:
        A :class:`BootstrapSummary`.

    Examples:
        >>> s = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]])  # a constant difference
        >>> out = paired_bootstrap(s, n_boot=200, seed=0)
        >>> float(out.difference[0, 1]), out.difference_interval[0, 1].round(12).tolist()
        (1.0, [1.0, 1.0])
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be (methods, examples) with at least one example, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (drop the examples with NaN first)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = s.shape[1]
    counts = bootstrap_counts(n, n_boot, seed)
    boot = s @ counts.T / n  # (M, B) resampled means
    q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    diff_boot = boot[:, None, :] - boot[None, :, :]  # (M, M, B)
    mean = s.mean(axis=1)
    return BootstrapSummary(
        mean=mean,
        interval=np.percentile(boot, q, axis=-1).T,
        difference=(s[:, None, :] - s[None, :, :]).mean(axis=-1),
        difference_interval=np.moveaxis(np.percentile(diff_boot, q, axis=-1), 0, -1),
    )
