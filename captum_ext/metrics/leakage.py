"""Feature leakage (Shah et al., Sec. 5-6): attribution that falls outside an instance's own signal.

On data whose discriminative features are known per instance (BlockMNIST's signal block, the block
``j`` of the simplified BlockMNIST, the coordinate ``j`` of ``x = y e_j``), an attribution that
satisfies assumption (A) concentrates on the instance's signal. *Leakage* is what it puts elsewhere:
the share of attribution mass outside the signal mask, or the share of the top-k attributed
features that lie outside it. 0 is perfect, 1 means nothing lands on the signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor

from .._format import format_inputs
from ._common import (
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    format_target,
    resolve_attributions,
)
from ._masking import UnitLayout, counts_for_fractions, rank_units

__all__ = ["LeakageResult", "feature_leakage", "leakage_from_scores"]

_ABSOLUTE = ("abs", "abs_sum", "abs_max", "l2")


def leakage_from_scores(
    scores: Tensor,
    signal: Tensor,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Leakage of flattened non-negative scores ``(N, P)`` against a boolean signal mask ``(N, P)``.

    Args:
        scores: non-negative relevance per feature.
        signal: ``True`` on each example's signal features.
        top_k: ``None`` for the mass share outside the signal; an integer ``k`` for the share of
            the ``k`` highest-scored features lying outside it (ties broken with ``generator``).
        generator: tie-breaking generator for ``top_k``.

    Returns:
        ``(N,)`` float64 shares in ``[0, 1]``; ``nan`` where an example's total mass is zero
        (mass mode only: its leakage is undefined).

    Examples:
        >>> leakage_from_scores(torch.tensor([[3.0, 1.0]]), torch.tensor([[True, False]]))
        tensor([0.2500], dtype=torch.float64)
    """
    scores = scores.to(torch.float64)
    outside = ~signal.to(torch.bool)
    if top_k is None:
        total = scores.sum(dim=1)
        out = (scores * outside).sum(dim=1)
        return torch.where(total > 0, out / total.clamp_min(1e-300), torch.nan)
    if not 1 <= top_k <= scores.shape[1]:
        raise ValueError(f"top_k must lie in [1, {scores.shape[1]}], got {top_k}")
    top = rank_units(scores, generator) < top_k
    return (top & outside).sum(dim=1).to(torch.float64) / top_k


@dataclass(frozen=True, eq=False, repr=False)
class LeakageResult(MetricResult):
    """Outcome of :func:`feature_leakage`.

    Attributes:
        leakage: ``(N,)`` float64 per-example share in ``[0, 1]`` (``nan`` for an all-zero
            attribution in mass mode).
        top_k: the number of top units scored, or ``None`` for the mass share.
        units: units per example.

    Examples:
        On ``x = y·e_j`` the signal is the coordinate ``j``; an attribution that puts 2 there and 1 on
        each of the 5 other coordinates leaks 5/7 of its mass:

        >>> from captum_ext.datasets import SignedBasisToy
        >>> x, y, mask = SignedBasisToy(4, d=6).tensors()
        >>> res = feature_leakage(x, x.abs() + 1.0, mask)
        >>> round(res.mean(), 4), res.top_k, res.units
        (0.7143, None, 6)
        >>> feature_leakage(x, x.abs(), mask, top_k=2).to_dict()
        {'leakage': [0.5, 0.5, 0.5, 0.5], 'top_k': 2, 'units': 6}
    """

    leakage: Tensor
    top_k: int | None
    units: int

    def mean(self) -> float:
        """Mean leakage over the examples (``nan`` examples ignored)."""
        return float(torch.nanmean(self.leakage))

    def plot(self, ax: Any = None, label: str | None = None, bins: int = 20) -> Any:
        """Histogram of the per-example leakage; returns the Axes."""
        ax = self._axes(ax, (4, 3))
        vals = self.leakage[~torch.isnan(self.leakage)].numpy()
        ax.hist(vals, bins=bins, range=(0.0, 1.0), alpha=0.7, label=label)
        ax.set_xlabel(
            "top-k share outside the signal" if self.top_k else "attribution share outside the signal"
        )
        ax.set_ylabel("examples")
        if label is not None:
            ax.legend(fontsize="small")
        return ax


@log_usage()
def feature_leakage(
    inputs: Tensor | tuple[Tensor, ...],
    attributions: Tensor | tuple[Tensor, ...] | Callable[..., Any],
    signal_masks: Tensor | tuple[Tensor, ...],
    *,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    max_examples_per_batch: int | None = None,
    top_k: int | float | None = None,
    aggregate: str = "abs",
    channel_dim: int = 1,
    seed: int = 0,
    attribute_kwargs: dict[str, Any] | None = None,
) -> LeakageResult:
    """Per-example share of attribution outside the instance's ground-truth signal.

    The relevance of a unit comes from the masking engine's ``aggregate`` (``"abs"``: every
    coordinate's ``|attribution|``, the default; ``"abs_sum"``, ``"abs_max"``, ``"l2"``: a pixel over
    ``channel_dim``, which is signal when any of its channels is). With ``top_k=None`` the result is
    ``sum(relevance outside signal) / sum(relevance)``; with ``top_k`` (a count, or a fraction in
    ``(0, 1]`` of the units, rounded half up and at least one unit) it is the share of the top-k
    units that lie outside the signal. For tuples of inputs every tensor is included.

    Args:
        inputs: the inputs, batch first (the attributions must be shaped like them).
        attributions: tensors shaped like ``inputs``, or a callable ``(inputs, target=...) ->
            attributions`` (e.g. ``Saliency(model).attribute``), called in batches with ``target``
            and ``additional_forward_args``.
        signal_masks: boolean (or 0/1) masks of the signal, broadcastable to each input
            (e.g. ``(N, 1, H, W)`` masks for ``(N, C, H, W)`` inputs).
        target: Captum-style target for a callable attribution.
        additional_forward_args: passed to a callable attribution.
        max_examples_per_batch: examples per attribution call (``None``: all at once).
        top_k: ``None`` (mass share), an ``int`` count, or a ``float`` fraction of the units.
        aggregate: ``"abs"``, ``"abs_sum"``, ``"abs_max"`` or ``"l2"`` (non-negative relevances).
        channel_dim: the channel dimension for per-pixel aggregates.
        seed: seed of the random tie-breaking for ``top_k``.
        attribute_kwargs: extra keyword arguments when ``attributions`` is a function.

    Returns:
        :class:`LeakageResult` with the per-example ``leakage`` ``(N,)`` and ``mean()``.

    Raises:
        ValueError: empty or NaN input, masks that do not broadcast, ``top_k`` out of range.

    Examples:
        >>> from captum_ext.datasets import SignedBasisToy
        >>> x, y, mask = SignedBasisToy(4, d=6).tensors()
        >>> feature_leakage(x, x.abs(), mask).leakage
        tensor([0., 0., 0., 0.], dtype=torch.float64)
    """
    if callable(attributions):
        check_eval_mode(attributions, "the model behind attributions")
    if aggregate not in _ABSOLUTE:
        raise ValueError(f"aggregate must be one of {_ABSOLUTE} (non-negative relevance), got {aggregate!r}")
    check_batch_size(max_examples_per_batch)
    xs, _ = format_inputs(inputs)
    n = check_data(xs)
    masks = signal_masks if isinstance(signal_masks, tuple) else (signal_masks,)
    if len(masks) != len(xs):
        raise ValueError(f"got {len(masks)} signal mask(s) for {len(xs)} input tensor(s)")
    full = []
    for i, (a, m) in enumerate(zip(xs, masks, strict=True)):
        if not isinstance(m, Tensor):
            raise TypeError(f"signal mask {i} must be a tensor, got {type(m).__name__}")
        if m.dim() == 0 or m.shape[0] != n:
            raise ValueError(f"signal mask {i} has {m.shape[0] if m.dim() else 0} examples, inputs have {n}")
        try:
            full.append(m.to(device=a.device).to(torch.bool).expand_as(a).to(torch.float64))
        except RuntimeError as err:
            raise ValueError(
                f"signal mask {i} of shape {tuple(m.shape)} does not broadcast to the input "
                f"of shape {tuple(a.shape)}"
            ) from err
    layout = UnitLayout.of(xs, aggregate, channel_dim)
    mask_layout = UnitLayout.of(xs, "abs" if aggregate == "abs" else "abs_max", channel_dim)
    signal = mask_layout.scores(tuple(full)) > 0
    k = None
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)):
            raise TypeError("top_k must be an int, a float fraction or None")
        if isinstance(top_k, float):
            if not 0.0 < top_k <= 1.0:
                raise ValueError(f"a fractional top_k must lie in (0, 1], got {top_k}")
            k = counts_for_fractions((top_k,), layout.total, "scored")[0]
        else:
            k = int(top_k)
            if not 1 <= k <= layout.total:
                raise ValueError(f"top_k must lie in [1, {layout.total}], got {top_k}")
    t = None
    if callable(attributions) and target is not None:
        # no model here to range-check against: the attribution method checks the range
        t = format_target(target, n, (n, 2**62))
        t = t[:, 0] if t.shape[1] == 1 else t  # type: ignore[union-attr]
    attrs_t = resolve_attributions(
        attributions,
        inputs,
        t,
        additional_forward_args=additional_forward_args,
        attribute_kwargs=attribute_kwargs,
        max_examples_per_batch=max_examples_per_batch,
    )
    scores = layout.scores(attrs_t)
    leak = leakage_from_scores(scores, signal, k, torch.Generator().manual_seed(seed))
    return LeakageResult(leakage=leak, top_k=k, units=layout.total)
