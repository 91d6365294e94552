"""Feature leakage (Shah et al., Sec. 5-6): attribution that falls outside an instance's own signal.

On data whose discriminative features are known per instance (BlockMNIST's signal block, the block
``j`` of the simplified BlockMNIST, the coordinate ``j`` of ``x = y e_j``), an attribution that
satisfies assumption (A) concentrates on the instance's signal. *Leakage* is what it puts elsewhere:
the share of attribution mass outside the signal mask, or the share of the top-k attributed
features that lie outside it. 0 is perfect, 1 means nothing lands on the signal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._format import format_inputs
from ._attribution import call_attribution, check_like
from ._masking import count_for_fraction, rank_units

__all__ = ["feature_leakage", "leakage_from_scores"]


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


def feature_leakage(
    attributions: Tensor | tuple[Tensor, ...] | Callable[..., Any],
    signal_masks: Tensor | tuple[Tensor, ...],
    *,
    top_k: int | float | None = None,
    inputs: Tensor | tuple[Tensor, ...] | None = None,
    target: Any = None,
    batch_size: int = 256,
    seed: int = 0,
) -> Tensor:
    """Per-example share of attribution outside the instance's ground-truth signal.

    The relevance of a feature is ``|attribution|`` (every coordinate on its own). With
    ``top_k=None`` the result is ``sum(|a| outside signal) / sum(|a|)``; with ``top_k`` (a count,
    or a fraction in ``(0, 1]`` of the features, rounded half up) it is the share of the top-k
    features that lie outside the signal. For tuples of inputs every tensor is included.

    Args:
        attributions: tensors ``(N, ...)``, or a callable ``(inputs, target) -> attributions``
            (then ``inputs`` and ``target`` are required).
        signal_masks: boolean (or 0/1) masks of the signal, broadcastable to each attribution
            tensor (e.g. ``(N, 1, H, W)`` masks for ``(N, C, H, W)`` attributions).
        top_k: ``None`` (mass share), an ``int`` count, or a ``float`` fraction of the features.
        inputs: inputs for a callable attribution.
        target: Captum-style target for a callable attribution.
        batch_size: batch size for a callable attribution.
        seed: seed of the random tie-breaking for ``top_k``.

    Returns:
        ``(N,)`` float64 tensor of shares in ``[0, 1]`` (``nan`` for an all-zero attribution in
        mass mode).

    Raises:
        ValueError: empty input, masks that do not broadcast, ``top_k`` out of range.

    Examples:
        >>> from captum_ext.datasets import SignedBasisToy
        >>> x, y, mask = SignedBasisToy(4, d=6).tensors()
        >>> feature_leakage(x.abs(), mask)
        tensor([0., 0., 0., 0.], dtype=torch.float64)
    """
    if callable(attributions):
        if inputs is None:
            raise ValueError("a callable attribution needs inputs=... (and target=...)")
        xs, is_tuple = format_inputs(inputs)
        t = None
        if target is not None:
            t = torch.as_tensor(target) if not isinstance(target, Tensor) else target
            t = t.reshape(-1).expand(xs[0].shape[0]) if t.numel() == 1 else t.reshape(-1)
        attrs = call_attribution(attributions, xs, is_tuple, t, batch_size)
        check_like(attrs, xs, "feature_leakage")
    else:
        attrs, _ = format_inputs(attributions)
    masks = signal_masks if isinstance(signal_masks, tuple) else (signal_masks,)
    if len(masks) != len(attrs):
        raise ValueError(f"got {len(masks)} signal mask(s) for {len(attrs)} attribution tensor(s)")
    n = attrs[0].shape[0]
    if n == 0:
        raise ValueError("attributions are empty: need at least one example")
    flat_scores, flat_masks = [], []
    for i, (a, m) in enumerate(zip(attrs, masks, strict=True)):
        if not isinstance(m, Tensor):
            raise TypeError(f"signal mask {i} must be a tensor, got {type(m).__name__}")
        if m.shape[0] != n:
            raise ValueError(f"signal mask {i} has {m.shape[0]} examples, attributions have {n}")
        try:
            m_full = m.to(device=a.device).to(torch.bool).expand_as(a)
        except RuntimeError as err:
            raise ValueError(
                f"signal mask {i} of shape {tuple(m.shape)} does not broadcast to attributions "
                f"of shape {tuple(a.shape)}"
            ) from err
        if not torch.isfinite(a).all():
            raise ValueError("attributions contain NaN or infinite values")
        flat_scores.append(a.detach().abs().reshape(n, -1))
        flat_masks.append(m_full.reshape(n, -1))
    scores = torch.cat(flat_scores, dim=1).cpu()
    signal = torch.cat(flat_masks, dim=1).cpu()
    k = None
    if top_k is not None:
        if isinstance(top_k, bool):
            raise TypeError("top_k must be an int, a float fraction or None")
        if isinstance(top_k, float):
            if not 0.0 < top_k <= 1.0:
                raise ValueError(f"a fractional top_k must lie in (0, 1], got {top_k}")
            k = max(1, count_for_fraction(top_k, scores.shape[1]))
        else:
            k = int(top_k)
    return leakage_from_scores(scores, signal, k, torch.Generator().manual_seed(seed))
