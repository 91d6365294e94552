"""The result of :func:`~captum_ext.compare_attributions`: scores, intervals, ranking, table, figure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .metrics import MetricResult

__all__ = ["Comparison", "PairedDifference"]


@dataclass(frozen=True)
class PairedDifference:
    """One pairwise difference of a comparison, oriented so that ``better`` is the better method.

    Attributes:
        metric: the metric's name.
        better, worse: method names; ``better`` has the better mean (ties: the earlier method).
        difference: ``mean(score[better] - score[worse])`` in the metric's units (negative when
            lower is better).
        low, high: the paired bootstrap interval of ``difference``.
        significant: the interval excludes 0.

    Examples:
        >>> p = PairedDifference("AOPC@10", "IG", "Saliency", 0.05, 0.01, 0.09, True)
        >>> p.better, p.significant
        ('IG', True)
    """

    metric: str
    better: str
    worse: str
    difference: float
    low: float
    high: float
    significant: bool


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


@dataclass(frozen=True, eq=False)
class Comparison(MetricResult):
    """Methods x metrics on one model and data, with paired bootstrap intervals.

    Attributes:
        methods: ``M`` method names, in the order given.
        metrics: ``K`` metric names.
        higher_is_better: ``K`` directions.
        scores: ``(M, K, N)`` float64 per-example scores (``nan`` where a metric gave none).
        n_examples: ``K`` examples used per metric (those finite for every method).
        mean: ``(M, K)`` mean score over the used examples.
        interval: ``(M, K, 2)`` bootstrap interval of each mean.
        difference: ``(K, M, M)`` ``mean[a] - mean[b]`` per metric.
        difference_interval: ``(K, M, M, 2)`` paired bootstrap interval of each difference.
        confidence, n_boot, seed: the bootstrap's coverage, resamples and seed.
        seconds: ``M`` wall-clock seconds each method took to explain the inputs (``0`` for
            precomputed maps).

    Examples:
        >>> import torch
        >>> from captum_ext import compare_attributions
        >>> from captum_ext.compare_metrics import Metric
        >>> x = torch.arange(8.0).view(4, 2)
        >>> mean_abs = Metric("mean |a|", lambda f, i, a, **kw: a.abs().mean(1), higher_is_better=True)
        >>> res = compare_attributions(torch.nn.Linear(2, 2), x, {"x": x, "x/2": x / 2}, [mean_abs],
        ...                            target=0, n_boot=200)
        >>> res.ranks("mean |a|"), res.ranking("mean |a|")[0]
        ({'x': 1, 'x/2': 2}, ('x', 1, 3.5))
        >>> print(res.to_markdown().splitlines()[2])
        | x | 3.5 [1.5, 5.5] #1 |
        >>> res
        Comparison(2 methods x 1 metrics, N=4, 95% paired bootstrap; rank 1 -- mean |a|: x)
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    scores: Tensor
    n_examples: tuple[int, ...]
    mean: Tensor
    interval: Tensor
    difference: Tensor
    difference_interval: Tensor
    confidence: float
    n_boot: int
    seed: int
    seconds: tuple[float, ...]

    def _k(self, metric: str | int) -> int:
        if isinstance(metric, int):
            return metric
        try:
            return self.metrics.index(metric)
        except ValueError:
            raise KeyError(f"unknown metric {metric!r}; the comparison has {list(self.metrics)}") from None

    def _better(self, k: int, a: int, b: int) -> bool:
        """Method ``a`` is significantly better than ``b`` on metric ``k``."""
        low, high = (float(v) for v in self.difference_interval[k, a, b])
        return low > 0 if self.higher_is_better[k] else high < 0

    def ranks(self, metric: str | int) -> dict[str, int]:
        """Rank of each method: 1 + the number of methods *significantly* better than it.

        Methods whose differences are not significant share a rank, so a rank says what the data
        support, not just the order of the means.
        """
        k = self._k(metric)
        m = len(self.methods)
        return {self.methods[a]: 1 + sum(self._better(k, b, a) for b in range(m) if b != a) for a in range(m)}

    def ranking(self, metric: str | int) -> list[tuple[str, int, float]]:
        """``(method, rank, mean)`` best first (by mean, in the metric's direction)."""
        k = self._k(metric)
        ranks = self.ranks(k)
        sign = -1.0 if self.higher_is_better[k] else 1.0
        order = sorted(range(len(self.methods)), key=lambda a: (sign * float(self.mean[a, k]), a))
        return [(self.methods[a], ranks[self.methods[a]], float(self.mean[a, k])) for a in order]

    def pairs(self, metric: str | int, significant_only: bool = False) -> list[PairedDifference]:
        """Every pair of methods once, oriented better-first (see :class:`PairedDifference`)."""
        k = self._k(metric)
        out = []
        order = [self.methods.index(name) for name, _, _ in self.ranking(k)]
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                low, high = (float(v) for v in self.difference_interval[k, a, b])
                sig = low > 0 or high < 0
                if significant_only and not sig:
                    continue
                d = float(self.difference[k, a, b])
                out.append(
                    PairedDifference(self.metrics[k], self.methods[a], self.methods[b], d, low, high, sig)
                )
        return out

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table (methods x metrics: mean, interval, rank) and the significant differences."""
        pct = f"{100 * self.confidence:g} %"
        head = ["method"] + [
            f"{m} ({'↑' if h else '↓'})" for m, h in zip(self.metrics, self.higher_is_better, strict=True)
        ]
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + [":---:"] * len(self.metrics)) + "|",
        ]
        ranks = [self.ranks(k) for k in range(len(self.metrics))]
        for a, name in enumerate(self.methods):
            cells = [name]
            for k in range(len(self.metrics)):
                lo, hi = (float(v) for v in self.interval[a, k])
                mean = float(self.mean[a, k])
                cells.append(f"{mean:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}] #{ranks[k][name]}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Mean per-example score [{pct} bootstrap interval] and rank (1 + the number of methods "
            f"significantly better; ↑ higher is better, ↓ lower is better). Paired bootstrap: "
            f"{self.n_boot} resamples of the examples, seed {self.seed}.",
            "",
        ]
        for k, metric in enumerate(self.metrics):
            sig = self.pairs(k, significant_only=True)
            text = "; ".join(
                f"{p.better} > {p.worse} ({p.difference:+.{digits}g} "
                f"[{p.low:.{digits}g}, {p.high:.{digits}g}])"
                for p in sig
            )
            lines.append(f"- {metric}, significant differences: {text or 'none'}")
        return "\n".join(lines) + "\n"

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Mean score of every method with its interval, one panel per metric.

        Args:
            ax: a sequence of ``K`` matplotlib Axes (a new figure when ``None``).
            **kwargs: passed to ``Axes.errorbar``.

        Returns:
            The Axes (a list, one per metric).
        """
        import matplotlib.pyplot as plt

        n_k = len(self.metrics)
        if ax is None:
            _, axes = plt.subplots(
                1, n_k, figsize=(3.2 * n_k + 1.5, 0.35 * len(self.methods) + 1.6), squeeze=False
            )
            axes = list(axes[0])
        else:
            axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
        if len(axes) != n_k:
            raise ValueError(f"need one Axes per metric ({n_k}), got {len(axes)}")
        y = list(range(len(self.methods)))[::-1]
        for k, a in enumerate(axes):
            mean = self.mean[:, k].tolist()
            iv = self.interval[:, k]
            err = [
                [m - float(lo) for m, lo in zip(mean, iv[:, 0], strict=True)],
                [float(hi) - m for m, hi in zip(mean, iv[:, 1], strict=True)],
            ]
            a.errorbar(mean, y, xerr=err, fmt="o", capsize=3, **kwargs)
            a.set_title(
                f"{self.metrics[k]} ({'higher' if self.higher_is_better[k] else 'lower'} is better)",
                fontsize=9,
            )
            a.set_yticks(y)
            a.set_yticklabels(list(self.methods) if k == 0 else [""] * len(y))
            a.grid(axis="x", alpha=0.3)
        return axes

    def __repr__(self) -> str:
        best = []
        for k, metric in enumerate(self.metrics):
            top = [name for name, rank, _ in self.ranking(k) if rank == 1]
            best.append(f"{metric}: {', '.join(top)}")
        n = ", ".join(str(v) for v in sorted(set(self.n_examples)))
        return (
            f"Comparison({len(self.methods)} methods x {len(self.metrics)} metrics, N={n}, "
            f"{_fmt(100 * self.confidence)}% paired bootstrap; rank 1 -- {'; '.join(best)})"
        )
