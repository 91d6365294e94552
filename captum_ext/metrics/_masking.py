"""The one masking engine of the metrics: ranking, aggregation over channels, fill, unmasking.

Pure tensor functions (no models, no I/O), used by pixel perturbation, AOPC, top-k leakage and DiffROAR.

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
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AGGREGATES",
    "DIFF_ROAR_FRACTIONS",
    "UnitLayout",
    "apply_fill",
    "check_fractions",
    "count_for_fraction",
    "counts_for_fractions",
    "format_baselines",
    "select_baselines",
    "unmask",
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
        shape[_channel_axis(len(input_shape), channel_dim) - 1] = 1
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
        cd = _channel_axis(a.dim(), channel_dim)
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
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    if generator is not None and p > 1:
        order = _shuffle_ties(scores.gather(1, order), order, generator)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p, device=scores.device).expand(n, p))
    return rank


def _shuffle_ties(ordered: Tensor, order: Tensor, generator: torch.Generator) -> Tensor:
    """``order`` with every run of equal ``ordered`` values put in a uniformly random order.

    ``ordered`` is ``scores`` sorted along rows by ``order``, so tied units are adjacent. Only the
    tied units are drawn and sorted (by a random key, then stably by their run), so the cost is
    one row-wise sort of the scores plus a little for the ties.
    """
    n, p = order.shape
    same = ordered[:, 1:] == ordered[:, :-1]  # position j + 1 ties with position j
    if not bool(same.any()):
        return order
    follows = torch.zeros(n, p, dtype=torch.bool, device=order.device)  # equal to its predecessor
    follows[:, 1:] = same
    tied = follows.clone()
    tied[:, :-1] |= same
    where = tied.view(-1).nonzero().squeeze(1)  # flat positions of tied units, in order
    run = (~follows.view(-1)[where]).long().cumsum(0)  # run id of each, non-decreasing
    perm = torch.argsort(torch.rand(where.numel(), generator=generator).to(order.device))
    perm = perm[torch.argsort(run[perm], stable=True)]  # each run's members, randomly ordered
    flat = order.reshape(-1)
    shuffled = flat.clone()
    shuffled[where] = flat[where[perm]]
    return shuffled.view(n, p)


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
            cd = _channel_axis(inputs.dim(), channel_dim)
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


def counts_for_fractions(fractions: Iterable[float], total: int, what: str = "kept") -> tuple[int, ...]:
    """Unit counts of validated ``fractions`` of ``total``; each must stand for at least one unit.

    Args:
        fractions: fractions in ``(0, 1]`` (see :func:`check_fractions`).
        total: units per example.
        what: what the count is (``"kept"``, ``"removed"``) for the error message.

    Returns:
        One count per fraction (:func:`count_for_fraction`), each in ``[1, total]``.

    Raises:
        ValueError: for a fraction that rounds to 0 units (it would score an empty or unchanged
            input), naming the smallest usable fraction ``1 / (2 * total)``.

    Examples:
        >>> counts_for_fractions((0.1, 0.5), 10)
        (1, 5)
        >>> try:
        ...     counts_for_fractions((1e-6,), 10)
        ... except ValueError as e:
        ...     print(str(e)[:58])
        fractions [1e-06] stand for 0 of the 10 units per example
    """
    fracs = check_fractions(fractions)
    counts = tuple(count_for_fraction(f, total) for f in fracs)
    zero = [f for f, k in zip(fracs, counts, strict=True) if k == 0]
    if zero:
        raise ValueError(
            f"fractions {zero} stand for 0 of the {total} units per example (nothing {what}); every "
            f"fraction must be at least {1 / (2 * total):.3g} (counts round half up)"
        )
    return counts


def _channel_axis(ndim: int, channel_dim: int) -> int:
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or not -ndim <= channel_dim < ndim:
        raise ValueError(f"channel_dim {channel_dim!r} is not a dimension of a {ndim}-d input")
    cd = channel_dim % ndim
    if cd == 0:
        raise ValueError("channel_dim must not be the batch dimension")
    return cd


@dataclass(frozen=True)
class UnitLayout:
    """How the units of one or several inputs are laid out: ranking and masking of tuple inputs.

    The units of all inputs are ranked together: scores are concatenated to ``(N, P)`` with
    ``P = sum(sizes)``, and a ``(N, P)`` unit mask is split back into one mask per input.

    Attributes:
        grids: per input, the per-example unit grid (:func:`unit_shape`).
        sizes: per input, the number of units per example.
        aggregate: the relevance of a unit (see :func:`relevance_scores`).
        channel_dim: the channel dimension of per-pixel aggregates.

    Examples:
        >>> layout = UnitLayout.of((torch.zeros(2, 3, 4, 4),), "abs_sum")
        >>> layout.grids, layout.total
        (((1, 4, 4),), 16)
    """

    grids: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    aggregate: str
    channel_dim: int

    @staticmethod
    def of(inputs: tuple[Tensor, ...], aggregate: str = "abs_sum", channel_dim: int = 1) -> UnitLayout:
        """The layout of ``inputs`` (a tuple of batch-first tensors); ``channel_dim`` is checked."""
        for x in inputs:
            _channel_axis(x.dim(), channel_dim)
        grids = tuple(unit_shape(x.shape, aggregate, channel_dim) for x in inputs)
        sizes = tuple(int(math.prod(g)) for g in grids)
        return UnitLayout(grids, sizes, aggregate, channel_dim)

    @property
    def total(self) -> int:
        """Units per example over all inputs."""
        return sum(self.sizes)

    def scores(self, attributions: tuple[Tensor, ...]) -> Tensor:
        """``(N, P)`` float64 relevance of every unit, on the CPU (see :func:`relevance_scores`)."""
        return torch.cat(
            [
                relevance_scores(a.detach().to(torch.float64), self.aggregate, self.channel_dim).cpu()
                for a in attributions
            ],
            dim=1,
        )

    def to_inputs(self, unit_mask: Tensor, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Split a ``(n, P)`` unit mask into boolean masks shaped like each of ``inputs`` (``n`` rows)."""
        pieces = torch.split(unit_mask, list(self.sizes), dim=1)
        return tuple(
            unit_mask_to_input(m.to(x.device), x.shape, g)
            for m, x, g in zip(pieces, inputs, self.grids, strict=True)
        )

    def fill(
        self, inputs: tuple[Tensor, ...], keep_units: Tensor, baselines: tuple[str | Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """Keep the units in ``keep_units`` (``(n, P)`` bool) and fill the rest with ``baselines``
        (one entry per input, already selected for these ``n`` examples; see :func:`select_baselines`)."""
        keeps = self.to_inputs(keep_units, inputs)
        return tuple(
            apply_fill(x, k, b, self.channel_dim) for x, k, b in zip(inputs, keeps, baselines, strict=True)
        )


def format_baselines(
    baselines: Any, inputs: tuple[Tensor, ...], name: str = "baselines"
) -> tuple[str | Tensor, ...]:
    """Validate fill values / baselines against the WHOLE input (all ``N`` examples), one per input.

    Accepted, as in Captum, for every input (or a tuple with one entry per input): a number;
    ``"mean"`` (each example's mean over its coordinates) or ``"channel_mean"`` (each example's mean
    per channel); a tensor shaped like one example (``x.shape[1:]``, or anything broadcastable to
    it); a tensor ``(1, ...)`` shared by all examples; or a per-example tensor ``(N, ...)``.
    ``None`` means 0, Captum's default.

    Args:
        baselines: the baselines.
        inputs: the inputs, batch first.
        name: the argument's name in error messages.

    Returns:
        One entry per input: a fill string, or a finite tensor on the input's device and dtype with
        as many dimensions as the input and a batch dimension of 1 (shared) or ``N`` (per example).

    Raises:
        ValueError: a tensor that fits neither one example nor all ``N`` examples, NaN values, a
            tuple of the wrong length, an unknown string.
        TypeError: anything else.

    Examples:
        >>> x = torch.zeros(4, 2)
        >>> format_baselines(1.0, (x,))[0]
        tensor([[1.]])
        >>> try:
        ...     format_baselines(torch.zeros(2, 2), (x,))
        ... except ValueError as e:
        ...     print(str(e)[:60])
        baselines of shape (2, 2) fits neither one example (2,) nor
    """
    if isinstance(baselines, tuple):
        if len(baselines) != len(inputs):
            raise ValueError(f"{name} has {len(baselines)} entries for {len(inputs)} input tensor(s)")
        return tuple(
            format_baselines(b, (x,), f"{name}[{i}]")[0]
            for i, (b, x) in enumerate(zip(baselines, inputs, strict=True))
        )
    out: list[str | Tensor] = []
    for x in inputs:
        n = x.shape[0]
        if baselines is None:
            baselines = 0.0
        if isinstance(baselines, str):
            if baselines not in ("mean", "channel_mean"):
                raise ValueError(
                    f"{name} must be a number, 'mean', 'channel_mean' or a tensor; got {baselines!r}"
                )
            if baselines == "channel_mean" and x.dim() < 3:
                raise ValueError(
                    f"{name}='channel_mean' needs inputs with a channel dimension, got {tuple(x.shape)}"
                )
            out.append(baselines)
            continue
        if isinstance(baselines, bool) or not isinstance(baselines, (int, float, Tensor)):
            raise TypeError(
                f"{name} must be a number, 'mean', 'channel_mean', a tensor or a tuple of these; "
                f"got {type(baselines).__name__}"
            )
        b = torch.as_tensor(baselines).to(device=x.device, dtype=x.dtype)
        if not torch.isfinite(b).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        example = tuple(x.shape[1:])
        fits = False
        try:
            if b.dim() == x.dim():
                fits = (
                    b.shape[0] in (1, n) and torch.broadcast_shapes(b.shape[1:], x.shape[1:]) == x.shape[1:]
                )
            elif b.dim() < x.dim():
                fits = torch.broadcast_shapes(b.shape, x.shape[1:]) == x.shape[1:]
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} of shape {tuple(b.shape)} fits neither one example {example} nor all {n} examples "
                f"{(n, *example)} of the input (per-example baselines need one row per example)"
            )
        out.append(b.reshape((1,) * (x.dim() - b.dim()) + tuple(b.shape)))  # batch dim: 1 or N
    return tuple(out)


def select_baselines(baselines: tuple[str | Tensor, ...], n: int, index: Tensor) -> tuple[str | Tensor, ...]:
    """The rows ``index`` of per-example baselines (from :func:`format_baselines` for ``n`` examples)."""
    return tuple(
        b.index_select(0, index.to(b.device)) if isinstance(b, Tensor) and b.shape[0] == n > 1 else b
        for b in baselines
    )


def unmask(
    inputs: Tensor, keep_units: Tensor, units: Sequence[int], fill: float | str | Tensor, channel_dim: int = 1
) -> Tensor:
    """Unmasked inputs ``x^S``: keep the units in ``keep_units`` (``(N, P)`` bool), fill the rest.

    Args:
        inputs: ``(N, ...)`` inputs.
        keep_units: ``(N, P)`` boolean mask over units.
        units: the per-example unit grid (see :func:`unit_shape`).
        fill: fill value (see :func:`apply_fill`).
        channel_dim: the channel dimension (for ``fill="channel_mean"``).

    Returns:
        A tensor like ``inputs``.

    Examples:
        >>> unmask(torch.tensor([[1.0, 2.0]]), torch.tensor([[False, True]]), (2,), 0.0)
        tensor([[0., 2.]])
    """
    keep = unit_mask_to_input(keep_units.to(inputs.device), inputs.shape, units)
    return apply_fill(inputs, keep, fill, channel_dim)
