"""Similarity between two batches of attributions: SSIM, Spearman rank correlation, top-k overlap.

Pure tensor functions, no models: every function takes two batches shaped alike (batch first) and
returns one score per example, shape ``(batch,)``.

* :func:`ssim` — structural similarity of single-channel maps with the Gaussian window of
  Wang et al. (2004) (11 x 11, sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, constants from the data
  range), averaged over the valid part of the map;
* :func:`spearman` — Spearman's rank correlation with average ranks for ties (as
  ``scipy.stats.spearmanr``);
* :func:`topk_intersection` — the fraction of the reference's top-k features that are also in the
  other attribution's top-k (Ghorbani et al., 2019), with ``k`` by default 40% of the reference's
  non-zero features (Gong et al., 2024, supplement B.6);
* helpers :func:`saliency_map` (channels -> one map) and :func:`normalize_maps` (min-max to [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ._masking import relevance_scores

__all__ = [
    "flatten_attributions",
    "normalize_maps",
    "rank_average",
    "saliency_map",
    "spearman",
    "ssim",
    "topk_intersection",
    "topk_sizes",
]

AttrLike = Tensor | tuple[Tensor, ...]


def flatten_attributions(attributions: AttrLike) -> Tensor:
    """Flatten a tensor or a tuple of tensors (batch first) to ``(batch, features)``.

    Args:
        attributions: a tensor ``(N, ...)`` or a tuple of such tensors with the same ``N``.

    Returns:
        A ``(N, D)`` tensor; a tuple is concatenated feature-wise in its order.

    Examples:
        >>> flatten_attributions((torch.zeros(2, 3), torch.zeros(2, 1, 2))).shape
        torch.Size([2, 5])
    """
    parts = attributions if isinstance(attributions, tuple) else (attributions,)
    if len(parts) == 0:
        raise ValueError("attributions must be a tensor or a non-empty tuple of tensors")
    for i, p in enumerate(parts):
        if not isinstance(p, Tensor):
            raise TypeError(f"attributions[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if p.dim() == 0:
            raise ValueError("attributions need a batch dimension, got a 0-d tensor")
    n = parts[0].shape[0]
    if any(p.shape[0] != n for p in parts):
        raise ValueError(
            f"all attribution tensors must share the batch size, got {[int(p.shape[0]) for p in parts]}"
        )
    flat = [p.reshape(n, -1) for p in parts]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _pair(a: AttrLike, b: AttrLike, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(a, tuple) != isinstance(b, tuple):
        raise TypeError(f"{name}: both attributions must be tensors, or both tuples")
    if isinstance(a, tuple):
        if len(a) != len(b):  # type: ignore[arg-type]
            raise ValueError(f"{name}: tuples of different lengths ({len(a)} vs {len(b)})")  # type: ignore[arg-type]
        shapes_a = [tuple(t.shape) for t in a]
        shapes_b = [tuple(t.shape) for t in b]  # type: ignore[union-attr]
    else:
        shapes_a, shapes_b = [tuple(a.shape)], [tuple(b.shape)]  # type: ignore[union-attr]
    if shapes_a != shapes_b:
        raise ValueError(f"{name}: attributions must have the same shapes, got {shapes_a} and {shapes_b}")
    fa, fb = flatten_attributions(a), flatten_attributions(b)
    if fa.shape[1] == 0:
        raise ValueError(f"{name}: attributions have no features")
    if fa.is_complex() or fb.is_complex():
        raise TypeError(f"{name}: complex attributions are not supported")
    if torch.isnan(fa.float()).any() or torch.isnan(fb.float()).any():
        raise ValueError(f"{name}: attributions contain NaN")
    return fa, fb.to(fa.device)


# ----------------------------------------------------------------------------------------------
# Maps


def saliency_map(attributions: Tensor, *, channel_dim: int | None = 1, absolute: bool = True) -> Tensor:
    """Reduce image attributions to one single-channel map per example.

    ``(N, C, H, W)`` attributions are summed over the channel dimension (of their absolute
    values when ``absolute``); ``(N, H, W)`` maps are returned as they are (absolute values when
    ``absolute``).

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` tensor.
        channel_dim: the channel dimension of 4-d attributions.
        absolute: take absolute values before summing (the usual saliency map).

    Returns:
        ``(N, H, W)`` maps.

    Examples:
        >>> saliency_map(torch.ones(2, 3, 4, 5)).shape
        torch.Size([2, 4, 5])
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
    a = attributions
    if a.dim() == 4:
        if channel_dim is None:
            raise ValueError("4-d attributions need a channel_dim to reduce")
        # the masking engine's per-pixel relevance, reshaped to (N, H, W)
        scores = relevance_scores(a, "abs_sum" if absolute else "sum", channel_dim)
        cd = channel_dim % 4
        return scores.reshape(a.shape[0], *(s for j, s in enumerate(a.shape) if j not in (0, cd)))
    if a.dim() == 3:
        return a.abs() if absolute else a
    raise ValueError(
        "a saliency map needs image attributions shaped (N, C, H, W) or (N, H, W); got shape "
        f"{tuple(attributions.shape)}"
    )


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each example's map to ``[0, 1]`` (a constant map becomes all zeros).

    Args:
        maps: ``(N, ...)`` tensor.

    Returns:
        A tensor of the same shape with every example spanning ``[0, 1]``.

    Examples:
        >>> normalize_maps(torch.tensor([[2.0, 4.0, 3.0]]))
        tensor([[0.0000, 1.0000, 0.5000]])
    """
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


# ----------------------------------------------------------------------------------------------
# SSIM


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _as_maps(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(
                f"{name}: SSIM here compares single-channel maps; got {x.shape[1]} channels. "
                "Reduce them first, e.g. with saliency_map(attributions)"
            )
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W) maps, got shape {tuple(x.shape)}")


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float | Tensor | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
) -> Tensor:
    """Structural similarity (Wang et al., 2004) of batched single-channel maps.

    Local means, variances and covariance are taken with a normalised Gaussian window
    (``window_size`` taps, standard deviation ``sigma``) over every position where the window fits
    inside the map (no padding), with the population (not the sample) covariance, and

        SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2)
               / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2))

    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` and ``L`` the data range. With the defaults this is
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L)``. Computed in float64, returned in ``x``'s dtype.

    Args:
        x: ``(N, H, W)`` or ``(N, 1, H, W)`` maps.
        y: maps of the same shape.
        data_range: ``L``: a positive float, a ``(N,)`` tensor, or ``None`` for each example's
            joint range ``max(x, y) - min(x, y)`` (two equal constant maps then score 1).
        window_size: odd number of taps of the Gaussian window; the maps must be at least this
            large.
        sigma: standard deviation of the window, in pixels.
        k1: constant of the luminance term.
        k2: constant of the contrast-structure term.
        reduction: ``"mean"`` for one score per example ``(N,)``, ``"none"`` for the SSIM map
            ``(N, H - window_size + 1, W - window_size + 1)``.

    Returns:
        ``(N,)`` mean SSIM per example, or the SSIM maps.

    Examples:
        >>> a = torch.rand(2, 16, 16)
        >>> ssim(a, a)
        tensor([1., 1.])
    """
    xm, ym = _as_maps(x, "x"), _as_maps(y, "y")
    if xm.shape != ym.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd int, got {window_size!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if k1 <= 0 or k2 <= 0:
        raise ValueError(f"k1 and k2 must be positive, got {k1} and {k2}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    n, h, w = xm.shape
    if h < window_size or w < window_size:
        raise ValueError(
            f"maps of size {h}x{w} are smaller than the {window_size}x{window_size} SSIM window; "
            "pass a smaller odd window_size (and a matching sigma)"
        )
    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    dev = xm.device
    a = xm.to(torch.float64)
    b = ym.to(device=dev, dtype=torch.float64)
    if torch.isnan(a).any() or torch.isnan(b).any():
        raise ValueError("ssim: maps contain NaN")

    if data_range is None:
        lo = torch.minimum(a.reshape(n, -1).min(1).values, b.reshape(n, -1).min(1).values)
        hi = torch.maximum(a.reshape(n, -1).max(1).values, b.reshape(n, -1).max(1).values)
        rng = hi - lo
    else:
        rng = torch.as_tensor(data_range, dtype=torch.float64, device=dev)
        if rng.dim() == 0:
            rng = rng.expand(n)
        if rng.shape != (n,):
            raise ValueError(f"data_range must be a float or a ({n},) tensor, got shape {tuple(rng.shape)}")
        if (rng <= 0).any():
            raise ValueError("data_range must be positive")
    c1 = ((k1 * rng) ** 2).view(n, 1, 1)
    c2 = ((k2 * rng) ** 2).view(n, 1, 1)

    g = _gaussian_window(window_size, sigma, torch.float64, dev)
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=0).unsqueeze(1)  # (5N, 1, H, W)
    filt = F.conv2d(stack, g.view(1, 1, 1, -1))
    filt = F.conv2d(filt, g.view(1, 1, -1, 1))[:, 0]
    mu_a, mu_b, e_aa, e_bb, e_ab = filt.split(n, dim=0)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    # den == 0 only when the joint range is 0, i.e. both maps are the same constant.
    smap = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    if reduction == "none":
        return smap.to(out_dtype)
    return smap.mean(dim=(1, 2)).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Spearman


def rank_average(x: Tensor) -> Tensor:
    """Per-row ranks ``1..D`` of a ``(N, D)`` tensor, ties sharing their average rank.

    Matches ``scipy.stats.rankdata(row, method="average")`` row by row; returned in float64.

    Args:
        x: ``(N, D)`` real tensor without NaN.

    Returns:
        ``(N, D)`` float64 ranks.

    Examples:
        >>> rank_average(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
        tensor([[3.5000, 1.0000, 3.5000, 2.0000]], dtype=torch.float64)
    """
    if x.dim() != 2:
        raise ValueError(f"rank_average expects a (N, D) tensor, got shape {tuple(x.shape)}")
    n, d = x.shape
    vals, order = torch.sort(x, dim=1, stable=True)
    starts = torch.ones_like(vals, dtype=torch.bool)
    starts[:, 1:] = vals[:, 1:] != vals[:, :-1]
    group = torch.cumsum(starts.long(), dim=1) - 1 + torch.arange(n, device=x.device)[:, None] * d
    pos = torch.arange(d, dtype=torch.float64, device=x.device).expand(n, d)
    flat_group = group.reshape(-1)
    sums = torch.zeros(n * d, dtype=torch.float64, device=x.device)
    sums.scatter_add_(0, flat_group, pos.reshape(-1))
    counts = torch.zeros(n * d, dtype=torch.float64, device=x.device)
    counts.scatter_add_(0, flat_group, torch.ones(n * d, dtype=torch.float64, device=x.device))
    avg = (sums[flat_group] / counts[flat_group]).reshape(n, d) + 1.0
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def spearman(a: AttrLike, b: AttrLike) -> Tensor:
    """Spearman rank correlation between ``a[i]`` and ``b[i]`` for every example ``i``.

    Every example is flattened (a tuple is concatenated), ranked with average ranks for ties and
    the Pearson correlation of the ranks is returned, as ``scipy.stats.spearmanr`` does. An example
    whose values are all equal in ``a`` or ``b`` has no rank correlation: its score is NaN.

    Args:
        a: ``(N, ...)`` tensor or tuple of tensors.
        b: the same shapes as ``a``.

    Returns:
        ``(N,)`` correlations in ``[-1, 1]`` (float64 when either input is float64, else float32).

    Examples:
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
        tensor([0.5000])
    """
    fa, fb = _pair(a, b, "spearman")
    if fa.shape[1] < 2:
        raise ValueError("spearman needs at least 2 features per example")
    ra, rb = rank_average(fa), rank_average(fb)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    rho = (num / den).clamp(-1.0, 1.0)  # 0 / 0 -> NaN (constant example) is kept
    out_dtype = torch.float64 if torch.float64 in (fa.dtype, fb.dtype) else torch.float32
    return rho.to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Top-k intersection


def _topk_masks(scores: Tensor, k: Tensor) -> Tensor:
    """Boolean ``(N, D)`` mask of the ``k[i]`` largest scores per row (ties: lower index first)."""
    n, d = scores.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(d, device=scores.device).expand(n, d))
    return position < k.view(n, 1)


def topk_sizes(
    reference: AttrLike,
    *,
    k: int | None = None,
    fraction: float = 0.4,
    nonzero_only: bool = True,
) -> Tensor:
    """The ``k`` used by :func:`topk_intersection` for each example, shape ``(N,)`` (long)."""
    fr = flatten_attributions(reference)
    n, d = fr.shape
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise ValueError(f"k must be an int in [1, {d}] (the number of features), got {k!r}")
        return torch.full((n,), k, dtype=torch.long, device=fr.device)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    count = (fr != 0).sum(dim=1) if nonzero_only else torch.full((n,), d, device=fr.device)
    # ceil with a little slack so that e.g. 0.7 * 10 gives 7, not 8
    return torch.ceil(count.to(torch.float64) * fraction - 1e-9).clamp_min(0).long()


def topk_intersection(
    reference: AttrLike,
    other: AttrLike,
    *,
    k: int | None = None,
    fraction: float = 0.4,
    nonzero_only: bool = True,
    absolute: bool = True,
) -> Tensor:
    """Fraction of the reference's top-k features that are also among the other's top-k.

    Features are ranked by absolute value (``absolute``) or by value, per example, over all
    coordinates of the (flattened) attribution. For pixel-level overlap of image attributions,
    reduce channels first with :func:`saliency_map`. Ties are broken by feature index (lower
    first), so the result is deterministic.

    By default ``k = ceil(fraction * #non-zero features of the reference)`` per example, with
    ``fraction = 0.4`` as in Gong et al. (2024, B.6-B.7); ``nonzero_only=False`` takes the fraction
    of all features, and an explicit ``k`` overrides both. An example whose reference is all zero
    (``k = 0``) scores NaN.

    Args:
        reference: ``(N, ...)`` attributions (tensor or tuple) that define ``k`` and the reference
            top-k set, e.g. before an attack.
        other: attributions of the same shapes.
        k: explicit number of top features (the same for every example).
        fraction: fraction of (non-zero) features in the top-k set.
        nonzero_only: count only the reference's non-zero features for the fraction.
        absolute: rank by absolute value.

    Returns:
        ``(N,)`` overlaps ``|top_k(reference) ∩ top_k(other)| / k`` in ``[0, 1]`` (float32, or
        float64 for float64 inputs).

    Examples:
        >>> ref = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
        >>> topk_intersection(ref, torch.tensor([[5.0, 0.0, 3.0, 2.0, 1.0]]), k=2)
        tensor([0.5000])
    """
    fa, fb = _pair(reference, other, "topk_intersection")
    kk = topk_sizes(fa, k=k, fraction=fraction, nonzero_only=nonzero_only)
    sa = fa.abs() if absolute else fa
    sb = fb.abs() if absolute else fb
    both = (_topk_masks(sa, kk) & _topk_masks(sb, kk)).sum(dim=1).to(torch.float64)
    denom = kk.to(torch.float64)
    out = torch.where(kk > 0, both / denom.clamp_min(1.0), torch.full_like(denom, math.nan))
    out_dtype = torch.float64 if torch.float64 in (fa.dtype, fb.dtype) else torch.float32
    return out.to(out_dtype)


# ------------------------------------------------------------------------------------------------
# comparing two attribution batches with a selection of the measures above

METRICS = ("ssim", "spearman", "topk")


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate a metric selection (``None`` means: decide from the attributions' shape)."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics}")
    return metrics


def _ssim_applicable(attributions: AttrLike, ssim_kwargs: dict[str, Any] | None) -> bool:
    if isinstance(attributions, tuple) or attributions.dim() not in (3, 4):
        return False
    window = (ssim_kwargs or {}).get("window_size", 11)
    return min(attributions.shape[-2:]) >= window


def settle_metrics(
    metrics: tuple[str, ...] | None, attributions: AttrLike, ssim_kwargs: dict[str, Any] | None
) -> tuple[str, ...]:
    """``None`` -> every metric that applies (SSIM only for image maps at least a window wide);
    an explicit ``"ssim"`` on non-image attributions raises ``ValueError``."""
    if metrics is None:
        if _ssim_applicable(attributions, ssim_kwargs):
            return METRICS
        return ("spearman", "topk")
    if "ssim" not in metrics:
        return metrics
    if isinstance(attributions, tuple) or attributions.dim() not in (3, 4):
        shape = (
            [tuple(a.shape) for a in attributions]
            if isinstance(attributions, tuple)
            else tuple(attributions.shape)
        )
        raise ValueError(
            f"SSIM needs image attributions (N, C, H, W) or (N, H, W), got {shape}; "
            "leave 'ssim' out of metrics for other inputs"
        )
    return metrics


def compare_attributions(
    original: AttrLike,
    other: AttrLike,
    metrics: tuple[str, ...],
    *,
    absolute: bool = True,
    topk_fraction: float = 0.4,
    ssim_kwargs: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Per-example similarity of two attribution batches for each requested metric.

    SSIM compares min-max normalised single-channel maps (channels summed, absolute values when
    ``absolute``) with ``data_range=1``, as in Adebayo et al.'s sanity checks; Spearman and top-k
    compare every feature (absolute values when ``absolute``).
    """
    out: dict[str, Tensor] = {}
    if "ssim" in metrics:
        ma = normalize_maps(saliency_map(original, absolute=absolute))  # type: ignore[arg-type]
        mb = normalize_maps(saliency_map(other, absolute=absolute))  # type: ignore[arg-type]
        out["ssim"] = ssim(ma, mb, data_range=1.0, **(ssim_kwargs or {}))
    if "spearman" in metrics:
        if absolute:
            a = tuple(t.abs() for t in original) if isinstance(original, tuple) else original.abs()
            b = tuple(t.abs() for t in other) if isinstance(other, tuple) else other.abs()
        else:
            a, b = original, other
        out["spearman"] = spearman(a, b)
    if "topk" in metrics:
        out["topk"] = topk_intersection(original, other, fraction=topk_fraction, absolute=absolute)
    return out
