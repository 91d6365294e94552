"""Pure tensor functions for attribution-ranked masking (no models, no I/O).

Vocabulary: an *attribution* has the shape of the input. A *unit* is what gets ranked and removed:
either every coordinate on its own (``aggregate="abs"`` or ``"signed"``, the DiffROAR paper's
default) or a pixel whose channels along ``channel_dim`` are reduced to one relevance score
(``"abs_sum"``, ``"sum"``, ``"abs_max"``, ``"l2"``). Scores are returned flattened, ``(N, P)`` for
``P`` units per example.

Counting rule (used by every metric): a fraction ``f`` of ``P`` units is
``count_for_fraction(f, P) = floor(f * P + 1/2)`` (round half up), computed exactly in rational
arithmetic on the shortest decimal form of ``f`` (so ``0.35 * 10`` is ``3.5`` and rounds to 4 and
``0.1 * 1568`` is ``156.8`` and rounds to 157, free of floating-point error).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
from torch import Tensor

__all__ = [
    "AGGREGATES",
    "DIFF_ROAR_FRACTIONS",
    "apply_fill",
    "check_fractions",
    "count_for_fraction",
    "keep_mask_from_rank",
    "rank_units",
    "relevance_scores",
    "unit_mask_to_input",
    "unit_shape",
]

#: Unmasking levels of Shah et al.: 5%, 10%, 20%, ..., 100%.
DIFF_ROAR_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_PER_COORDINATE = ("abs", "signed")
_PER_PIXEL = ("abs_sum", "sum", "abs_max", "l2")
AGGREGATES: tuple[str, ...] = _PER_COORDINATE + _PER_PIXEL


def check_fractions(fractions: Iterable[float]) -> tuple[float, ...]:
    """Validate fractions: a non-empty sequence of distinct numbers in ``(0, 1]``.

    Args:
        fractions: the fractions.

    Returns:
        The fractions as a tuple of floats (order kept).

    Raises:
        ValueError: when empty, duplicated, not finite, or outside ``(0, 1]``.

    Examples:
        >>> check_fractions([0.1, 0.5, 1])
        (0.1, 0.5, 1.0)
    """
    if isinstance(fractions, (int, float)):
        fractions = (fractions,)
    out = tuple(float(f) for f in fractions)
    if not out:
        raise ValueError("fractions must be a non-empty sequence of numbers in (0, 1]")
    bad = [f for f in out if not (math.isfinite(f) and 0.0 < f <= 1.0)]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1]; got {bad}")
    if len(set(out)) != len(out):
        raise ValueError(f"fractions must be distinct, got {out}")
    return out


def count_for_fraction(fraction: float, total: int) -> int:
    """Number of units a ``fraction`` of ``total`` stands for: ``floor(fraction * total + 1/2)``.

    Exact rational arithmetic on the shortest decimal form of ``fraction`` (see the module doc).

    Args:
        fraction: a number in ``[0, 1]``.
        total: number of units.

    Returns:
        An integer in ``[0, total]``.

    Examples:
        >>> count_for_fraction(0.35, 10), count_for_fraction(0.1, 1568), count_for_fraction(1.0, 7)
        (4, 157, 7)
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    f = Fraction(repr(float(fraction)))
    if not 0 <= f <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return int(math.floor(f * total + Fraction(1, 2)))


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def unit_shape(input_shape: Sequence[int], aggregate: str, channel_dim: int = 1) -> tuple[int, ...]:
    """Per-example shape of the unit grid (``input_shape`` without batch, channel dim set to 1).

    Args:
        input_shape: full input shape, batch first.
        aggregate: see the module doc.
        channel_dim: the channel dimension (of the full shape) reduced by per-pixel aggregates;
            inputs with only a batch and one feature dimension have no channels.

    Returns:
        The shape (without batch) that a unit mask is reshaped to before broadcasting.

    Examples:
        >>> unit_shape((5, 3, 4, 4), "abs_sum"), unit_shape((5, 3, 4, 4), "abs")
        ((1, 4, 4), (3, 4, 4))
    """
    _check_aggregate(aggregate)
    shape = list(input_shape[1:])
    if aggregate in _PER_PIXEL and len(input_shape) > 2:
        cd = channel_dim % len(input_shape)
        if cd == 0:
            raise ValueError("channel_dim must not be the batch dimension")
        shape[cd - 1] = 1
    return tuple(shape)


def relevance_scores(attributions: Tensor, aggregate: str = "abs", channel_dim: int = 1) -> Tensor:
    """Flattened relevance of every unit: ``(N, P)``.

    Args:
        attributions: ``(N, ...)`` attributions, shaped like the inputs.
        aggregate: ``"abs"`` (|a| per coordinate, default), ``"signed"`` (a per coordinate),
            or a per-pixel reduction over ``channel_dim``: ``"abs_sum"`` (sum of |a|), ``"sum"``,
            ``"abs_max"`` (max of |a|), ``"l2"`` (Euclidean norm). Inputs shaped ``(N, D)`` have no
            channel dimension: per-pixel reductions then act on single coordinates.
        channel_dim: the channel dimension for per-pixel reductions.

    Returns:
        Scores ``(N, P)``; larger means more relevant.

    Raises:
        ValueError: for unknown aggregates or non-finite attributions.

    Examples:
        >>> a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
        >>> relevance_scores(a, "abs_sum")
        tensor([[4.0000, 2.5000]])
    """
    _check_aggregate(aggregate)
    if attributions.dim() < 2:
        raise ValueError("attributions need a batch dimension and at least one feature dimension")
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or infinite values")
    a = attributions
    n = a.shape[0]
    if aggregate == "abs":
        return a.abs().reshape(n, -1)
    if aggregate == "signed":
        return a.reshape(n, -1)
    if a.dim() == 2:
        a = a.unsqueeze(1)
        cd = 1
    else:
        cd = channel_dim % a.dim()
        if cd == 0:
            raise ValueError("channel_dim must not be the batch dimension")
    if aggregate == "abs_sum":
        s = a.abs().sum(dim=cd)
    elif aggregate == "sum":
        s = a.sum(dim=cd)
    elif aggregate == "abs_max":
        s = a.abs().amax(dim=cd)
    else:
        s = a.norm(dim=cd)
    return s.reshape(n, -1)


def rank_units(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rank of every unit, ``0`` for the most relevant: ``(N, P)`` long.

    Ties are broken uniformly at random with ``generator`` (reproducible), or by position (earlier
    first) when ``generator`` is ``None``. Random tie-breaking matters for constant or mask-like
    attributions, where a positional rule would always pick the first rows of an image.

    Args:
        scores: ``(N, P)`` relevance scores.
        generator: a CPU ``torch.Generator`` for tie-breaking.

    Returns:
        ``rank[i, j]`` is the position of unit ``j`` of example ``i`` in decreasing relevance.

    Examples:
        >>> rank_units(torch.tensor([[0.1, 0.9, 0.5]]))
        tensor([[2, 0, 1]])
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, P), got shape {tuple(scores.shape)}")
    n, p = scores.shape
    if generator is None:
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
    else:
        shuffle = torch.argsort(torch.rand(n, p, generator=generator), dim=1).to(scores.device)
        shuffled = scores.gather(1, shuffle)
        order = shuffle.gather(1, torch.argsort(shuffled, dim=1, descending=True, stable=True))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p, device=scores.device).expand(n, p))
    return rank


def keep_mask_from_rank(rank: Tensor, k: int, which: str) -> Tensor:
    """Boolean ``(N, P)`` mask of the ``k`` most (``"top"``) or least (``"bottom"``) relevant units.

    Args:
        rank: ranks from :func:`rank_units`.
        k: how many units to select, ``0 <= k <= P``.
        which: ``"top"`` or ``"bottom"``.

    Returns:
        A mask with exactly ``k`` ``True`` entries per row.

    Examples:
        >>> keep_mask_from_rank(torch.tensor([[2, 0, 1]]), 1, "bottom")
        tensor([[ True, False, False]])
    """
    p = rank.shape[1]
    if not 0 <= k <= p:
        raise ValueError(f"k must lie in [0, {p}], got {k}")
    if which == "top":
        return rank < k
    if which == "bottom":
        return rank >= p - k
    raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")


def unit_mask_to_input(mask: Tensor, input_shape: Sequence[int], units: Sequence[int]) -> Tensor:
    """Broadcast a ``(N, P)`` unit mask to the full input shape.

    Args:
        mask: ``(N, P)`` boolean mask over units.
        input_shape: the full input shape (batch first).
        units: the per-example unit grid from :func:`unit_shape`.

    Returns:
        A boolean tensor of ``input_shape`` (an expanded view).
    """
    return mask.reshape(mask.shape[0], *units).expand(*input_shape)


def apply_fill(inputs: Tensor, keep: Tensor, fill: float | str | Tensor, channel_dim: int = 1) -> Tensor:
    """Keep ``inputs`` where ``keep`` is ``True`` and put the fill value elsewhere.

    Args:
        inputs: ``(N, ...)`` inputs.
        keep: boolean mask broadcastable to ``inputs``.
        fill: a number; ``"mean"`` (each example's mean over all its coordinates, the discriminative
            pixel perturbation of Srinivas & Fleuret); ``"channel_mean"`` (each example's mean per
            channel); or a tensor broadcastable to ``inputs`` (e.g. a per-coordinate baseline of
            shape ``inputs.shape[1:]``).
        channel_dim: channel dimension for ``"channel_mean"``.

    Returns:
        A new tensor like ``inputs``.

    Examples:
        >>> apply_fill(torch.tensor([[1.0, 3.0]]), torch.tensor([[True, False]]), "mean")
        tensor([[1., 2.]])
    """
    if isinstance(fill, str):
        if fill == "mean":
            value = inputs.reshape(inputs.shape[0], -1).mean(dim=1)
            value = value.reshape(-1, *([1] * (inputs.dim() - 1)))
        elif fill == "channel_mean":
            if inputs.dim() < 3:
                raise ValueError("fill='channel_mean' needs inputs with a channel dimension")
            cd = channel_dim % inputs.dim()
            dims = tuple(d for d in range(1, inputs.dim()) if d != cd)
            value = inputs.mean(dim=dims, keepdim=True)
        else:
            raise ValueError(f"fill must be a number, 'mean', 'channel_mean' or a tensor; got {fill!r}")
        return torch.where(keep, inputs, value.to(inputs.dtype))
    if isinstance(fill, Tensor):
        value = fill.to(device=inputs.device, dtype=inputs.dtype)
        try:
            torch.broadcast_shapes(value.shape, inputs.shape)
        except RuntimeError as err:
            raise ValueError(
                f"fill tensor of shape {tuple(fill.shape)} does not broadcast to inputs {tuple(inputs.shape)}"
            ) from err
        return torch.where(keep, inputs, value)
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise TypeError(f"fill must be a number, 'mean', 'channel_mean' or a tensor; got {fill!r}")
    value = torch.tensor(float(fill), dtype=inputs.dtype, device=inputs.device)
    return torch.where(keep, inputs, value)
