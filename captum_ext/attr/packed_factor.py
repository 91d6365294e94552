"""Closed-form Hessian factors packed by each example's own rank, chunked to a memory budget.

:func:`~captum_ext.attr.hessian.low_rank_factor` runs ``max_i r_i + 1`` batched backward passes, so a
batch mixing one unsure example (rank ~ c - 1) with confident ones (rank 1-2) pays ``n max r`` per-example
backward work and stores ``n d max r`` floats. Here the examples are sorted by rank and cut into
contiguous groups, each with its own forward graph and factor: the work is ``sum_G |G| (max_G r + 1)``
backward passes plus one forward per group, which is close to ``sum_i (r_i + 1)`` when the ranks differ,
and each group's factor (``|G| d max_G r`` floats plus the VJP buffer) fits ``max_memory``.
:func:`plan_rank_groups` chooses the cut by dynamic programming on the cost model
(:class:`~captum_ext.attr.cost_model.PassCosts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._format import run_forward, select_additional_args
from .cost_model import DEFAULT_COSTS, PassCosts, kept_ranks
from .curvature.closed_form import LowRankFactor, low_rank_factor
from .graph import DEFAULT_RANK_TOL, LossGraph, build_loss_graph


@dataclass(frozen=True)
class RankPlan:
    """Groups of examples for packed factors.

    Attributes:
        groups: example indices per group (into the batch), highest ranks first.
        ranks: kept rank per example ``(n,)``.
        work: predicted cost in ``PassCosts`` units (forwards + backward passes of all groups).
        memory: predicted bytes of the largest group's factor and VJP buffer.
    """

    groups: list[Tensor]
    ranks: Tensor
    work: float
    memory: int


def factor_memory(size: int, rank: int, d: int, itemsize: int, vjp_batch: int = 16) -> int:
    """Bytes of a factor for ``size`` examples of rank ``rank``: ``B`` plus the batched-VJP buffer.

    Examples:
        >>> factor_memory(2, 3, 10, 4)  # B: 2*3*10 floats; buffer: 4 VJPs of 2 examples
        560
    """
    return int(size * d * itemsize * (rank + min(vjp_batch, rank + 1)))


def plan_rank_groups(
    ranks: Sequence[int] | Tensor,
    d: int,
    itemsize: int = 4,
    max_memory: int | None = None,
    costs: PassCosts = DEFAULT_COSTS,
    vjp_batch: int = 16,
) -> RankPlan:
    """Cut the batch, sorted by rank, into groups of least predicted work that each fit ``max_memory``.

    A group ``G`` costs ``|G| (forward + backward (max_G r + 1))``: its own forward graph, one VJP per
    column of its largest rank and one for the gradient. Exact dynamic programming over contiguous
    cuts of the sorted ranks (``O(n^2)``, ``n`` the batch).

    Args:
        ranks: kept rank per example.
        d: input features per example.
        itemsize: bytes per float.
        max_memory: bytes one group's factor may take (``None``: no limit).
        costs: per-pass costs.
        vjp_batch: VJPs vectorised in one backward call.

    Returns:
        :class:`RankPlan`.

    Raises:
        ValueError: if one example's factor alone exceeds ``max_memory`` (use the matrix-free path).

    Examples:
        >>> plan = plan_rank_groups([1, 40, 1, 1], d=10)
        >>> [g.tolist() for g in plan.groups]
        [[1], [0, 2, 3]]
        >>> plan.work  # (1 + 41) + 3 * (1 + 2), against 4 * (1 + 41) = 168 for one group
        51.0
    """
    r = torch.as_tensor(ranks, dtype=torch.int64).reshape(-1).cpu()
    n = r.numel()
    if n == 0:
        raise ValueError("ranks must hold at least one example")
    order = torch.sort(r, descending=True, stable=True).indices
    s = r[order].tolist()
    budget = float("inf") if max_memory is None else max_memory
    if factor_memory(1, s[0], d, itemsize, vjp_batch) > budget:
        raise ValueError(
            f"max_memory={max_memory} bytes is below one example's factor "
            f"({factor_memory(1, s[0], d, itemsize, vjp_batch)} bytes at rank {s[0]}); "
            "use the matrix-free Gauss-Newton path"
        )
    best = [0.0] + [float("inf")] * n  # best[j]: least work for the first j sorted examples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # group = sorted[i:j], its largest rank is s[i]; ties keep larger groups
            size = j - i
            if factor_memory(size, s[i], d, itemsize, vjp_batch) > budget:
                continue
            work = best[i] + size * (costs.forward + costs.backward * (s[i] + 1))
            if work < best[j]:
                best[j], cut[j] = work, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    groups.reverse()
    memory = max(factor_memory(len(g), int(r[g].max()), d, itemsize, vjp_batch) for g in groups)
    return RankPlan(groups=groups, ranks=r, work=best[n], memory=memory)


def iter_packed_factors(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    additional_args: tuple[Any, ...] = (),
    target: Tensor | None = None,
    *,
    rank_tol: float = DEFAULT_RANK_TOL,
    max_rank: int | None = None,
    max_memory: int | None = None,
    costs: PassCosts = DEFAULT_COSTS,
    vjp_batch: int = 16,
    graph: LossGraph | None = None,
) -> Iterator[tuple[Tensor, LowRankFactor]]:
    """Yield ``(indices, factor)`` per group of :func:`plan_rank_groups`, one group at a time.

    Each factor is :func:`~captum_ext.attr.hessian.low_rank_factor` of its group's own forward graph,
    so a consumer that solves and drops each group holds at most one group's factor.

    Args:
        forward_func: the model function.
        inputs: batch-first tensors.
        additional_args: extra ``forward_func`` arguments (formatted tuple).
        target: ``(n,)`` classes, or ``None`` for the predicted ones.
        rank_tol, max_rank, vjp_batch: as for :func:`~captum_ext.attr.hessian.low_rank_factor`.
        max_memory: bytes one group's factor may take (``None``: no limit).
        costs: per-pass costs for the plan.
        graph: a live graph of the whole batch, reused when the plan keeps one group (and for the
            ranks; otherwise a forward pass without graph computes them).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
        >>> x = torch.randn(3, 6, dtype=torch.float64)
        >>> parts = list(iter_packed_factors(model, (x,)))
        >>> sum(len(idx) for idx, _ in parts)
        3
    """
    n = inputs[0].shape[0]
    if graph is not None:
        probs, target = graph.probs, graph.target if target is None else target
    else:
        with torch.no_grad():
            logits = run_forward(forward_func, tuple(x.detach() for x in inputs), additional_args)
        probs = torch.softmax(logits.to(torch.float64), dim=1)
        if target is None:
            target = logits.argmax(1)
    ranks = kept_ranks(probs, rank_tol, max_rank)
    itemsize = inputs[0].element_size()
    d = sum(x[0].numel() for x in inputs)
    plan = plan_rank_groups(ranks, d, itemsize, max_memory, costs, vjp_batch)
    for idx in plan.groups:
        if graph is not None and len(plan.groups) == 1:
            g = graph
            if not torch.equal(g.target, target):
                g = LossGraph(g.inputs, g.logits, target, g.probs)
            idx = torch.arange(n)
        else:
            dev_idx = idx.to(inputs[0].device)
            xs = tuple(x.index_select(0, dev_idx) for x in inputs)
            args = select_additional_args(additional_args, n, dev_idx)
            g = build_loss_graph(forward_func, xs, args, target.index_select(0, dev_idx.to(target.device)))
        yield idx, low_rank_factor(g, rank_tol=rank_tol, max_rank=max_rank, vjp_batch=vjp_batch)


def merge_factors(parts: Sequence[tuple[Tensor, LowRankFactor]], n: int) -> LowRankFactor:
    """One :class:`LowRankFactor` for the whole batch from packed groups (zero columns pad the ranks).

    Zero columns change no product, eigenvalue or solve; the merged ``B`` takes ``n d max r`` floats,
    so use it only when that fits (tests, small batches).
    """
    first = parts[0][1]
    d = first.B.shape[1]
    r = max(f.B.shape[2] for _, f in parts)
    like = first.B
    B = like.new_zeros(n, d, r)
    eigvals = first.eigvals.new_zeros(n, r)
    rank = first.rank.new_zeros(n)
    discarded = first.discarded.new_zeros(n)
    gradient = first.gradient.new_zeros(n, d)
    for idx, f in parts:
        i = idx.to(like.device)
        k = f.B.shape[2]
        B[i, :, :k] = f.B
        eigvals[i, :k] = f.eigvals
        rank[i], discarded[i], gradient[i] = f.rank, f.discarded, f.gradient
    n_vjp = sum(f.n_vjp for _, f in parts)  # each group ran its own backward passes
    return LowRankFactor(B=B, eigvals=eigvals, rank=rank, discarded=discarded, gradient=gradient, n_vjp=n_vjp)
