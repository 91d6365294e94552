"""How far apart two attribution maps are, per confidence band, and which images to show (pure).

CASO and CAFO are compared as the CASO paper's Fig. 1 does: each map scaled to unit L2 norm, then
the L2 distance between them (0: the same map up to scale; sqrt(2): orthogonal maps), together
with the cosine (``cos = 1 - dist**2 / 2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["CONFIDENCE_EDGES", "by_confidence", "map_difference", "select_examples"]

CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.9, 0.99, 1.0)


def map_difference(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example cosine and normalised L2 distance between two batches of maps.

    Args:
        a, b: maps of the same shape, batch first.

    Returns:
        ``(cos, dist)``, two ``(N,)`` float64 tensors; ``dist = ||a/|a| - b/|b|||`` lies in
        ``[0, 2]``. Both are ``nan`` for an example where either map is all zero.

    Examples:
        >>> a, b = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.0, 3.0], [1.0, 1.0]])
        >>> cos, dist = map_difference(a, b)
        >>> cos.tolist(), [round(v, 4) for v in dist.tolist()]
        ([0.0, 1.0], [1.4142, 0.0])
    """
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb  # nan rows where a norm is 0
    cos = (ua * ub).sum(dim=1).clamp(-1.0, 1.0)
    return cos.cpu(), (ua - ub).norm(dim=1).cpu()


def by_confidence(
    confidence: Tensor, values: Tensor, edges: Sequence[float] = CONFIDENCE_EDGES
) -> list[dict[str, Any]]:
    """Summaries of ``values`` in bands of prediction confidence (the last band includes 1).

    Args:
        confidence: ``(N,)`` top softmax probabilities.
        values: ``(N,)`` per-example values (e.g. :func:`map_difference`'s distance).
        edges: increasing band edges.

    Returns:
        One dictionary per band: ``low``, ``high``, ``n`` and the ``median``, ``min`` and ``max``
        of the values in it (``nan`` for an empty band).

    Examples:
        >>> rows = by_confidence(torch.tensor([0.3, 0.4, 0.95]), torch.tensor([1.0, 3.0, 0.0]), (0, 0.5, 1))
        >>> [(r["n"], r["median"], r["max"]) for r in rows]
        [(2, 1.0, 3.0), (1, 0.0, 0.0)]
    """
    conf, vals = confidence.detach().double().cpu(), values.detach().double().cpu()
    rows = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = k == len(edges) - 2
        inside = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        v = vals[inside]
        empty = v.numel() == 0
        rows.append(
            {
                "low": float(lo),
                "high": float(hi),
                "n": int(v.numel()),
                "median": math.nan if empty else float(v.median()),
                "min": math.nan if empty else float(v.min()),
                "max": math.nan if empty else float(v.max()),
            }
        )
    return rows


def _greedy_distinct(order: Sequence[int], labels: Sequence[int], n: int, taken: set[int]) -> list[int]:
    """The first ``n`` of ``order`` not in ``taken``, unseen labels first (then the rest in order)."""
    free = [i for i in order if i not in taken]
    seen: set[int] = set()
    first = []
    for i in free:
        if labels[i] not in seen:
            first.append(i)
            seen.add(labels[i])
    rest = [i for i in free if i not in set(first)]
    return (first + rest)[:n]


def select_examples(
    cos: Tensor, confidence: Tensor, labels: Tensor, n: int, n_show: int
) -> tuple[Tensor, Tensor]:
    """Pick ``n`` distinct images: where CASO and CAFO differ most, and confident ones for contrast.

    ``max(1, n // 4)`` of them are the most confident predictions (where CASO and CAFO coincide,
    the CASO paper's Theorem 4; distinct labels first), the others those with the smallest cosine
    between the two maps. The order makes the first ``n_show`` the figure's rows: the
    ``n_show - 1`` most different images, then the most confident one; the remaining picks follow.

    Args:
        cos: ``(N,)`` cosine between CASO and CAFO per image (``nan`` counts as 1).
        confidence: ``(N,)`` top softmax probability per image.
        labels: ``(N,)`` class per image.
        n: how many to pick, ``2 <= n <= N``.
        n_show: how many rows the figure shows, ``2 <= n_show <= n``.

    Returns:
        ``(indices, confident)``: ``(n,)`` distinct long indices and ``(n,)`` bools marking the
        confident picks.

    Examples:
        >>> cos = torch.tensor([1.0, 0.6, 0.9, 1.0, 0.999])
        >>> conf = torch.tensor([0.99, 0.4, 0.7, 0.999, 0.9999])
        >>> idx, confident = select_examples(cos, conf, torch.tensor([0, 1, 2, 3, 3]), 3, 2)
        >>> idx.tolist(), confident.tolist()
        ([1, 4, 2], [False, True, False])
    """
    total = int(cos.shape[0])
    if confidence.shape[0] != total or labels.shape[0] != total:
        raise ValueError("cos, confidence and labels must have the same length")
    if not 2 <= n <= total:
        raise ValueError(f"cannot pick {n} examples out of {total} (need 2 <= n <= N)")
    if not 2 <= n_show <= n:
        raise ValueError(f"need 2 <= n_show <= n, got n_show={n_show}, n={n}")
    lab = [int(v) for v in labels.tolist()]
    n_confident = max(1, n // 4)
    by_cos = torch.sort(cos.detach().double().cpu().nan_to_num(1.0), stable=True).indices.tolist()
    by_conf = torch.sort(confidence.detach().double().cpu(), descending=True, stable=True).indices.tolist()
    differ = by_cos[: n - n_confident]
    confident = _greedy_distinct(by_conf, lab, n_confident, set(differ))
    k = n_show - 1
    order = differ[:k] + confident[:1] + differ[k:] + confident[1:]
    return torch.tensor(order, dtype=torch.long), torch.tensor([i in confident for i in order])
