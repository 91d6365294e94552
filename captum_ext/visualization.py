"""Display helpers for attribution maps.

Two layers, kept apart:

* **pure tensor maths** -- :func:`aggregate_channels`, :func:`normalize_saliency` (the
  non-diverging SmoothGrad normalisation that Singla et al. (ICML 2019) use for every method, their
  App. D: absolute value, sum over the colour channels, cap at the 99th percentile, scale to
  ``[0, 1]``), :func:`normalize_diverging` (the signed counterpart, in ``[-1, 1]``) and
  :func:`images_for_display`. Tensors in, tensors out, batch first, any device, float32/float64.
* **figures** -- :func:`plot_attribution_grid` (images x methods) with matplotlib imported lazily
  inside the function; it returns the ``matplotlib.figure.Figure`` (built without ``pyplot``, so it
  works headless and leaves pyplot's global state alone).

Examples:
    >>> maps = normalize_saliency(torch.randn(2, 3, 8, 8))  # (N, C, H, W) -> (N, H, W) in [0, 1]
    >>> maps.shape, bool(maps.min() >= 0), bool(maps.max() <= 1)
    (torch.Size([2, 8, 8]), True, True)
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "aggregate_channels",
    "images_for_display",
    "normalize_diverging",
    "normalize_saliency",
    "plot_attribution_grid",
]

_REDUCTIONS = ("abs_sum", "abs_max", "l2", "sum")


# --------------------------------------------------------------------------------------------------
# pure tensor maths


def _check_map(attributions: Any, name: str = "attributions") -> Tensor:
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if not attributions.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {attributions.dtype}")
    if attributions.dim() < 2:
        raise ValueError(
            f"{name} must be batch first with at least one feature dimension, got shape "
            f"{tuple(attributions.shape)}"
        )
    if attributions.shape[0] == 0:
        raise ValueError(f"{name} hold no examples (batch size 0)")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return attributions


def _check_percentile(percentile: float) -> float:
    p = float(percentile)
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    return p


def aggregate_channels(attributions: Tensor, channel_dim: int | None = 1, reduce: str = "abs_sum") -> Tensor:
    """Reduce the channel dimension of attribution maps to one value per pixel.

    Args:
        attributions: ``(N, ...)`` maps, e.g. ``(N, C, H, W)``.
        channel_dim: the dimension to reduce (``1`` for ``(N, C, H, W)``, ``-1`` for channels
            last); ``None`` when the maps have no channel dimension (then ``"abs_*"``/``"l2"`` give
            the absolute value and ``"sum"`` returns the maps unchanged).
        reduce: ``"abs_sum"`` (sum of absolute values: SmoothGrad's and the CASO paper's choice),
            ``"abs_max"``, ``"l2"`` (Euclidean norm over channels) or ``"sum"`` (signed sum, for
            diverging maps).

    Returns:
        The maps without ``channel_dim`` (non-negative unless ``reduce="sum"``).

    Raises:
        ValueError: unknown ``reduce``, or ``channel_dim`` out of range or equal to the batch
            dimension.

    Examples:
        >>> aggregate_channels(torch.tensor([[[1.0], [-2.0]]]))  # (N=1, C=2, P=1)
        tensor([[3.]])
    """
    a = _check_map(attributions)
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
    if channel_dim is None:
        return a if reduce == "sum" else a.abs()
    if not -a.dim() <= channel_dim < a.dim():
        raise ValueError(f"channel_dim {channel_dim} is out of range for shape {tuple(a.shape)}")
    dim = channel_dim % a.dim()
    if dim == 0:
        raise ValueError("channel_dim must not be the batch dimension (0)")
    if a.dim() < 3:
        raise ValueError(
            f"maps of shape {tuple(a.shape)} have no channel dimension besides the feature one; "
            "pass channel_dim=None"
        )
    if reduce == "abs_sum":
        return a.abs().sum(dim=dim)
    if reduce == "abs_max":
        return a.abs().amax(dim=dim)
    if reduce == "l2":
        return torch.linalg.vector_norm(a, dim=dim)
    return a.sum(dim=dim)


def _per_example_quantile(values: Tensor, percentile: float) -> Tensor:
    """The ``percentile`` of each example's values (linear interpolation, as numpy's default)."""
    flat = values.reshape(values.shape[0], -1)
    q = torch.quantile(flat, percentile / 100.0, dim=1)
    return q.reshape((-1,) + (1,) * (values.dim() - 1))


def normalize_saliency(
    attributions: Tensor,
    *,
    channel_dim: int | None = 1,
    reduce: str = "abs_sum",
    percentile: float = 99.0,
) -> Tensor:
    """SmoothGrad's non-diverging normalisation of attribution maps for display, per example.

    As in App. D of Singla et al. (after Smilkov et al.'s SmoothGrad): take the absolute value,
    aggregate the channels (sum by default), cap each map at its own ``percentile`` (99th by
    default) and divide by that value, so that the result lies in ``[0, 1]`` with the top
    ``100 - percentile`` % of the pixels saturated at 1. Every example is normalised on its own,
    and the result is invariant to rescaling a map by any non-zero constant.

    Sparse maps (for instance CASO's with a large ``lambda1``) can have more than ``percentile`` %
    of zeros, which makes the percentile 0: such a map is divided by its maximum instead, so its
    non-zero pixels stay visible and graded. An all-zero map stays all zero.

    Args:
        attributions: ``(N, C, H, W)`` maps (or any ``(N, ...)`` with ``channel_dim`` set
            accordingly, or ``channel_dim=None`` for maps without channels).
        channel_dim: the channel dimension to aggregate; ``None`` for no channel dimension.
        reduce: channel aggregation, see :func:`aggregate_channels` (``"sum"`` is not allowed:
            the result must be non-negative; use :func:`normalize_diverging` for signed maps).
        percentile: the cap, in ``(0, 100]``; ``100`` divides by the maximum.

    Returns:
        ``(N, ...)`` maps without the channel dimension, values in ``[0, 1]``, same dtype and
        device as ``attributions``.

    Raises:
        TypeError: non-tensor or non-floating input.
        ValueError: empty or non-finite input, ``percentile`` outside ``(0, 100]``, bad ``reduce``
            or ``channel_dim``.

    Examples:
        >>> a = torch.arange(100.0).reshape(1, 1, 10, 10)  # values 0..99
        >>> m = normalize_saliency(a)  # the 99th percentile is 98.01
        >>> float(m[0, 9, 9]), round(float(m[0, 5, 0]), 4)
        (1.0, 0.5102)
    """
    if reduce == "sum":
        raise ValueError("reduce='sum' gives signed maps: use normalize_diverging for those")
    p = _check_percentile(percentile)
    mag = aggregate_channels(attributions, channel_dim, reduce)
    cap = _per_example_quantile(mag, p)
    peak = mag.reshape(mag.shape[0], -1).amax(dim=1).reshape(cap.shape)
    cap = torch.where(cap > 0, cap, peak)
    out = torch.where(cap > 0, mag / torch.where(cap > 0, cap, torch.ones_like(cap)), 0.0)
    return out.clamp(0.0, 1.0)


def normalize_diverging(
    attributions: Tensor,
    *,
    channel_dim: int | None = 1,
    percentile: float = 99.0,
) -> Tensor:
    """Signed (diverging) normalisation: sum the channels, divide by a percentile of ``|map|``.

    The counterpart of :func:`normalize_saliency` for maps whose sign matters (e.g. the signed
    ``Delta`` of CASO): the channels are summed with their signs, each map is divided by the
    ``percentile`` of its absolute values (its maximum when that percentile is 0) and clipped to
    ``[-1, 1]``. Zero stays zero, signs are kept.

    Args:
        attributions: ``(N, C, H, W)`` maps (or ``(N, ...)``, see ``channel_dim``).
        channel_dim: the channel dimension to sum; ``None`` for maps without channels.
        percentile: the cap on ``|map|``, in ``(0, 100]``.

    Returns:
        ``(N, ...)`` maps without the channel dimension, values in ``[-1, 1]``.

    Examples:
        >>> normalize_diverging(torch.tensor([[[-4.0, 2.0, 0.0]]]), percentile=100)
        tensor([[-1.0000,  0.5000,  0.0000]])
    """
    p = _check_percentile(percentile)
    signed = aggregate_channels(attributions, channel_dim, "sum")
    mag = signed.abs()
    cap = _per_example_quantile(mag, p)
    peak = mag.reshape(mag.shape[0], -1).amax(dim=1).reshape(cap.shape)
    cap = torch.where(cap > 0, cap, peak)
    out = torch.where(cap > 0, signed / torch.where(cap > 0, cap, torch.ones_like(cap)), 0.0)
    return out.clamp(-1.0, 1.0)


def images_for_display(images: Tensor, channel_dim: int | None = 1) -> Tensor:
    """Turn a batch of images into ``imshow``-ready tensors in ``[0, 1]`` on the CPU.

    One-channel images become ``(N, H, W)`` (show them with a grey colormap), three-channel ones
    ``(N, H, W, 3)``. Images already in ``[0, 1]`` are kept as they are; any other image is
    min-max scaled on its own (a constant image becomes zeros).

    Args:
        images: ``(N, C, H, W)`` with ``C`` 1 or 3 (``channel_dim`` says where ``C`` is), or
            ``(N, H, W)`` with ``channel_dim=None``.
        channel_dim: position of the channel dimension, or ``None``.

    Returns:
        A float tensor on the CPU, ``(N, H, W)`` or ``(N, H, W, 3)``.

    Raises:
        ValueError: a channel count other than 1 or 3, or images that are not 2-D.

    Examples:
        >>> images_for_display(torch.zeros(2, 1, 4, 3)).shape
        torch.Size([2, 4, 3])
    """
    x = _check_map(images, "images").detach().to("cpu", torch.float32)
    if channel_dim is not None:
        if not -x.dim() <= channel_dim < x.dim() or channel_dim % x.dim() == 0:
            raise ValueError(f"channel_dim {channel_dim} is invalid for shape {tuple(x.shape)}")
        x = x.movedim(channel_dim % x.dim(), -1)
        if x.shape[-1] == 1:
            x = x[..., 0]
        elif x.shape[-1] != 3:
            raise ValueError(f"images need 1 or 3 channels to be shown, got {x.shape[-1]}")
    if not (x.dim() == 3 or (x.dim() == 4 and x.shape[-1] == 3)):
        raise ValueError(f"images must be 2-D (H, W) per example, got shape {tuple(images.shape)}")
    flat = x.reshape(x.shape[0], -1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    in_range = (lo >= 0) & (hi <= 1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scaled = (flat - lo[:, None]) / span[:, None]
    return torch.where(in_range[:, None], flat, scaled).reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# figures


def fit_title(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` wrapped at spaces (or hyphens) so that no line is wider than ``width_inches``.

    The width of a character is taken as 0.6 of the font size (a safe bound for the sans-serif
    fonts matplotlib uses), so column titles of a grid do not run into their neighbours.

    Examples:
        >>> print(fit_title("anti-SM (authors' code)", 1.25, 9))
        anti-SM
        (authors' code)
    """
    chars = max(4, int(width_inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars, break_long_words=False)) or text


def plot_attribution_grid(
    images: Tensor,
    attributions: Mapping[str, Tensor],
    *,
    row_titles: Sequence[str] | None = None,
    outlines: Tensor | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    normalize: str = "absolute",
    channel_dim: int | None = 1,
    percentile: float = 99.0,
    cmap: str | None = None,
    outline_color: str = "tab:orange",
    image_title: str = "input",
    cell_size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Any:
    """A grid of images (rows) by attribution methods (columns), each map normalised for display.

    The first column shows the input, the others one method each (in the mapping's order),
    normalised by :func:`normalize_saliency` (``normalize="absolute"``, grey-scale maps as in the
    SmoothGrad and CASO papers), :func:`normalize_diverging` (``"diverging"``, a red-blue map) or
    shown as given (``"none"``: maps already in ``[0, 1]``, one channel).

    Args:
        images: ``(N, C, H, W)`` (``C`` 1 or 3) or ``(N, H, W)`` with ``channel_dim=None``.
        attributions: method name -> maps shaped like ``images``.
        row_titles: one label per image (e.g. label and prediction), shown left of each row.
        outlines: optional ``(N, H, W)`` (or ``(N, 1, H, W)``) boolean masks whose bounding box is
            drawn as a rectangle on every cell of the row (e.g. BlockMNIST's signal block).
        annotations: optional method name -> one short text per image, written under each map.
        normalize: ``"absolute"`` (default), ``"diverging"`` or ``"none"``.
        channel_dim: channel dimension of images and maps, or ``None``.
        percentile: the cap of the normalisation.
        cmap: colormap of the maps (default ``"gray"`` for absolute, ``"bwr"`` for diverging).
        outline_color: colour of the ``outlines`` rectangles.
        image_title: header of the input column.
        cell_size: ``(width, height)`` of one cell in inches (default from the image aspect).
        title: figure title.

    Returns:
        The ``matplotlib.figure.Figure`` (save it with ``fig.savefig(path)``).

    Raises:
        ValueError: maps not shaped like the images, wrong number of row titles, outlines or
            annotations, unknown ``normalize``, no methods.

    Examples:
        >>> fig = plot_attribution_grid(torch.rand(2, 1, 8, 8), {"grad": torch.randn(2, 1, 8, 8)})
        >>> len(fig.axes)
        4
    """
    if normalize not in ("absolute", "diverging", "none"):
        raise ValueError(f"normalize must be 'absolute', 'diverging' or 'none', got {normalize!r}")
    if not attributions:
        raise ValueError("attributions is empty: pass at least one method name -> maps")
    shown = images_for_display(images, channel_dim)
    n = shown.shape[0]
    h, w = shown.shape[1], shown.shape[2]
    maps: dict[str, Tensor] = {}
    for name, a in attributions.items():
        a = _check_map(a, f"attributions[{name!r}]")
        if tuple(a.shape) != tuple(images.shape):
            raise ValueError(
                f"attributions[{name!r}] has shape {tuple(a.shape)}, the images {tuple(images.shape)}"
            )
        if normalize == "absolute":
            m = normalize_saliency(a, channel_dim=channel_dim, percentile=percentile)
        elif normalize == "diverging":
            m = normalize_diverging(a, channel_dim=channel_dim, percentile=percentile)
        else:
            m = aggregate_channels(a, channel_dim, "sum") if channel_dim is not None else a
        maps[name] = m.detach().to("cpu", torch.float32)
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"got {len(row_titles)} row titles for {n} images")
    boxes = _bounding_boxes(outlines, n, (h, w)) if outlines is not None else None
    if annotations is not None:
        for name, texts in annotations.items():
            if name not in maps:
                raise ValueError(f"annotations name {name!r} is not one of the methods")
            if len(texts) != n:
                raise ValueError(f"annotations[{name!r}] has {len(texts)} entries for {n} images")

    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as err:
        raise ImportError(
            "plot_attribution_grid needs matplotlib: pip install matplotlib (or captum-ext[demo])"
        ) from err

    cols = 1 + len(maps)
    if cell_size is None:
        cell_w = 1.45
        cell_size = (cell_w, max(0.9, cell_w * h / w) + 0.35)
    fig = Figure(
        figsize=(cell_size[0] * cols + (0.5 if row_titles else 0.1), cell_size[1] * n + 0.5),
        layout="constrained",
    )
    axes = fig.subplots(n, cols, squeeze=False)
    if cmap is None:
        cmap = "bwr" if normalize == "diverging" else "gray"
    vmin = -1.0 if normalize == "diverging" else 0.0
    for i in range(n):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.imshow(
                    shown[i].numpy(),
                    cmap="gray" if shown.dim() == 3 else None,
                    vmin=0.0,
                    vmax=1.0,
                    interpolation="nearest",
                )
                if i == 0:
                    ax.set_title(fit_title(image_title, cell_size[0], 9), fontsize=9)
                if row_titles is not None:
                    ax.set_ylabel(row_titles[i], fontsize=8)
            else:
                name = list(maps)[j - 1]
                ax.imshow(maps[name][i].numpy(), cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
                if i == 0:
                    ax.set_title(fit_title(name, cell_size[0], 9), fontsize=9)
                if annotations is not None and name in annotations:
                    ax.set_xlabel(annotations[name][i], fontsize=7)
            if boxes is not None and boxes[i] is not None:
                r0, r1, c0, c1 = boxes[i]  # drawn just inside the box's outer pixel edges
                ax.add_patch(
                    Rectangle(
                        (c0 - 0.2, r0 - 0.2),
                        c1 - c0 + 0.4,
                        r1 - r0 + 0.4,
                        fill=False,
                        lw=1.2,
                        ec=outline_color,
                    )
                )
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _bounding_boxes(masks: Tensor, n: int, hw: tuple[int, int]) -> list[tuple[int, int, int, int] | None]:
    """``(row0, row1, col0, col1)`` (inclusive) of each mask's True pixels, ``None`` if empty."""
    m = masks.detach().to("cpu")
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3 or m.shape[0] != n or tuple(m.shape[1:]) != hw:
        raise ValueError(f"outlines must be (N, H, W) = ({n}, {hw[0]}, {hw[1]}), got {tuple(masks.shape)}")
    boxes: list[tuple[int, int, int, int] | None] = []
    for k in range(n):
        rows = m[k].to(torch.bool).any(dim=1).nonzero().flatten()
        cols = m[k].to(torch.bool).any(dim=0).nonzero().flatten()
        if rows.numel() == 0:
            boxes.append(None)
        else:
            boxes.append((int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])))
    return boxes
