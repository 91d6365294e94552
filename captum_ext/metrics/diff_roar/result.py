"""The result of DiffROAR, its leakage threshold and the plain-words leakage warning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._common import NOT_IN_DICT, MetricResult

__all__ = ["DiffROARResult", "leakage_message", "leakage_threshold", "majority_rate"]

SCHEMES = ("top", "bottom")


@dataclass(frozen=True, eq=False, repr=False)
class DiffROARResult(MetricResult):
    """Outcome of :func:`diff_roar`.

    Attributes:
        fractions: the unmasking levels ``k`` (fractions of units kept).
        seeds: the retraining seeds (one pseudo-seed ``0`` for the no-retraining variant).
        accuracies: ``(2, F, S)`` float64 test accuracies; index 0 is top-k, 1 is bottom-k.
        counts: units kept at each fraction (rounded half up, see
            :func:`~captum_ext.metrics._masking.count_for_fraction`).
        units: units per example.
        retrain: whether models were retrained (``False``: ``forward_func`` was scored).
        control: ``(2, F)`` test accuracies of the mask-only control (models retrained, with the
            first seed, on the binary kept-unit masks alone), or ``None`` when not computed.
        chance: the majority-class rate of the test labels (what a constant guess scores).
        leakage_threshold: the control accuracy above which :attr:`leakage` is flagged:
            ``chance + max(leakage_tolerance, 3 * sqrt(chance * (1 - chance) / N_test))``.
        attribution_target: ``"prediction"`` or ``"label"`` for a callable attribution,
            ``"given"`` for precomputed attributions.
        timings: cells computed / read from the cache and their seconds (not in ``to_dict``).

    Examples:
        >>> res = DiffROARResult((0.5, 1.0), (0,), torch.tensor([[[0.9], [0.5]], [[0.6], [0.5]]]),
        ...                      (1, 2), 2, control=torch.tensor([[0.5, 0.5], [0.5, 0.5]]), chance=0.5)
        >>> res.diff, res.leakage
        (tensor([0.3000, 0.0000]), False)
    """

    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracies: Tensor
    counts: tuple[int, ...]
    units: int
    retrain: bool = True
    control: Tensor | None = None
    chance: float = float("nan")
    leakage_threshold: float = float("nan")
    attribution_target: str = "given"
    timings: dict[str, Any] = field(default_factory=dict, metadata=NOT_IN_DICT)

    def __repr__(self) -> str:
        diff = ", ".join(f"{v:.3f}" for v in self.diff.tolist())
        return (
            f"DiffROARResult(fractions={len(self.fractions)}, seeds={len(self.seeds)}, "
            f"retrain={self.retrain}, diff=[{diff}], leakage={self.leakage})"
        )

    @property
    def top(self) -> Tensor:
        """Mean top-k predictive power per fraction, ``(F,)``."""
        return self.accuracies[0].mean(dim=1)

    @property
    def bottom(self) -> Tensor:
        """Mean bottom-k predictive power per fraction, ``(F,)``."""
        return self.accuracies[1].mean(dim=1)

    @property
    def diffs(self) -> Tensor:
        """Per-seed DiffROAR, ``(F, S)`` (the top and bottom cells of a seed share an init)."""
        return self.accuracies[0] - self.accuracies[1]

    @property
    def diff(self) -> Tensor:
        """DiffROAR per fraction: mean over seeds of top minus bottom, ``(F,)``."""
        return self.diffs.mean(dim=1)

    @property
    def std(self) -> Tensor:
        """Standard deviation over seeds of the per-seed DiffROAR, ``(F,)`` (zeros for one seed)."""
        if self.diffs.shape[1] < 2:
            return torch.zeros(len(self.fractions), dtype=self.accuracies.dtype)
        return self.diffs.std(dim=1)

    @property
    def top_std(self) -> Tensor:
        """Standard deviation over seeds of the top-k accuracy, ``(F,)``."""
        a = self.accuracies[0]
        return a.std(dim=1) if a.shape[1] > 1 else torch.zeros(a.shape[0], dtype=a.dtype)

    @property
    def bottom_std(self) -> Tensor:
        """Standard deviation over seeds of the bottom-k accuracy, ``(F,)``."""
        a = self.accuracies[1]
        return a.std(dim=1) if a.shape[1] > 1 else torch.zeros(a.shape[0], dtype=a.dtype)

    @property
    def leakage(self) -> bool:
        """Whether the mask-only control beats :attr:`leakage_threshold` at some fraction."""
        if self.control is None or math.isnan(self.leakage_threshold):
            return False
        return bool((self.control > self.leakage_threshold).any())

    @property
    def cells(self) -> dict[tuple[str, float, int], float]:
        """Every cell's accuracy keyed by ``(scheme, fraction, seed)``."""
        return {
            (scheme, f, s): float(self.accuracies[i, j, m])
            for i, scheme in enumerate(SCHEMES)
            for j, f in enumerate(self.fractions)
            for m, s in enumerate(self.seeds)
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary: the fields plus the curves (``top``, ``bottom``, ``diff``, ``std``)."""
        out = super().to_dict()
        out["accuracies"] = {"top": self.accuracies[0].tolist(), "bottom": self.accuracies[1].tolist()}
        if self.control is not None:
            out["control"] = {"top": self.control[0].tolist(), "bottom": self.control[1].tolist()}
        out.update(
            top=self.top.tolist(),
            bottom=self.bottom.tolist(),
            diff=self.diff.tolist(),
            std=self.std.tolist(),
            leakage=self.leakage,
        )
        return out

    def plot(
        self, ax: Any = None, label: str | None = None, show_parts: bool = False, show_control: bool = False
    ) -> Any:
        """Plot DiffROAR against the unmasking fraction (mean +- std over seeds).

        Args:
            ax: matplotlib ``Axes`` to draw on (a new figure when ``None``).
            label: legend label of the curve.
            show_parts: also draw the top-k and bottom-k accuracy curves.
            show_control: also draw the mask-only control accuracies and the leakage threshold.

        Returns:
            The matplotlib ``Axes``.
        """
        ax = self._axes(ax)
        x = [100 * f for f in self.fractions]
        mean, std = self.diff.numpy(), self.std.numpy()
        (line,) = ax.plot(x, mean, marker="o", label=label or "DiffROAR")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        if show_parts:
            ax.plot(x, self.top.numpy(), ls="--", label="top-k accuracy")
            ax.plot(x, self.bottom.numpy(), ls=":", label="bottom-k accuracy")
        if show_control and self.control is not None:
            ax.plot(x, self.control[0].numpy(), ls="-.", label="mask-only control (top-k)")
            ax.plot(x, self.control[1].numpy(), ls="-.", label="mask-only control (bottom-k)")
            ax.axhline(self.leakage_threshold, color="red", lw=0.8, ls="--", label="leakage threshold")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("unmasked fraction k (%)")
        ax.set_ylabel("DiffROAR" if not (show_parts or show_control) else "accuracy / DiffROAR")
        ax.legend(loc="best", fontsize="small")
        return ax


def majority_rate(labels: Tensor) -> float:
    """Accuracy of always guessing the most frequent label.

    Examples:
        >>> majority_rate(torch.tensor([0, 1, 1, 2]))
        0.5
    """
    return float(torch.bincount(labels.reshape(-1).long()).max()) / labels.numel()


def leakage_threshold(chance: float, n: int, tolerance: float) -> float:
    """``chance + max(tolerance, 3 * sqrt(chance * (1 - chance) / n))``: "well above chance".

    Three binomial standard errors keep a small test set's noise from raising the alarm.

    Examples:
        >>> round(leakage_threshold(0.5, 100, 0.1), 3)
        0.65
    """
    return chance + max(tolerance, 3.0 * math.sqrt(chance * (1.0 - chance) / max(n, 1)))


def leakage_message(result: DiffROARResult) -> str:
    """The leakage warning in plain words, with the next step (empty when there is no leakage).

    Examples:
        >>> res = DiffROARResult((1.0,), (0,), torch.ones(2, 1, 1), (4,), 4,
        ...                      control=torch.tensor([[0.9], [0.5]]), chance=0.5, leakage_threshold=0.6)
        >>> leakage_message(res).split(":")[0]
        'DiffROAR may be misleading here'
    """
    if not result.leakage or result.control is None:
        return ""
    control = result.control
    i, j = divmod(int(control.argmax()), len(result.fractions))
    step = (
        "The attributions were taken at the true labels, which lets the masks encode the label: "
        "pass attribution_target='prediction'."
        if result.attribution_target == "label"
        else "Compare attributions at a fraction where result.control stays near chance, or use a "
        "per-pixel aggregate (aggregate='abs_sum') so that the mask shape carries less."
    )
    return (
        f"DiffROAR may be misleading here: a model trained on WHICH units were kept (the {SCHEMES[i]}-k "
        f"masks at k={result.fractions[j]:g}, without their values) already predicts the test labels "
        f"with accuracy {float(control[i, j]):.3f}, against {result.chance:.3f} for always guessing the "
        f"commonest class (alarm above {result.leakage_threshold:.3f}). The top-k/bottom-k accuracies "
        "then reward where the attribution puts its units, not what the kept values say "
        f"(see result.control). {step}"
    )
