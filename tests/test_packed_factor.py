"""Rank-packed, memory-chunked factors equal the unpacked closed form."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_ext.attr.cost_model import PassCosts, kept_ranks
from captum_ext.attr.hessian import build_loss_graph, low_rank_factor
from captum_ext.attr.packed_factor import (
    factor_memory,
    iter_packed_factors,
    merge_factors,
    plan_rank_groups,
)

from ._nets import relu_cnn


def _mixed_confidence_batch(c: int = 12):
    """A ReLU net whose batch mixes confident (rank ~1) and unsure (rank ~c-1) examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, c)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    x[[0, 3]] *= 2000.0  # far from the origin: large logits, confident
    x[[1, 4]] *= 0.01  # near the origin: nearly uniform softmax, full rank
    return model, x


def test_packed_factor_equals_unpacked():
    model, x = _mixed_confidence_batch()
    target = torch.tensor([0, 1, 2, 3, 4])
    ref = low_rank_factor(build_loss_graph(model, (x,), (), target), rank_tol=0.0)
    parts = list(iter_packed_factors(model, (x,), target=target, rank_tol=0.0))
    assert len(parts) > 1  # the ranks differ, so the plan splits the batch
    packed = merge_factors(parts, 5)
    assert torch.equal(packed.rank, ref.rank)
    v = torch.randn(5, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(packed.hvp(v), ref.hvp(v), rtol=0, atol=1e-12)
    torch.testing.assert_close(packed.gradient, ref.gradient, rtol=0, atol=1e-14)
    torch.testing.assert_close(packed.top_eigenvalue(), ref.top_eigenvalue(), rtol=1e-12, atol=0)
    lam2 = ref.top_eigenvalue() / 2 + 1.0
    g = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(packed.solve_shifted(g, lam2), ref.solve_shifted(g, lam2), rtol=0, atol=1e-12)
    # backward work: packed columns are sum of per-group max ranks, below n * max r
    work = sum(len(idx) * (f.B.shape[2] + 1) for idx, f in parts)
    assert work < 5 * (int(ref.rank.max()) + 1)


def test_memory_budget_chunks_without_changing_the_result():
    model = relu_cnn(c=5)
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    graph = build_loss_graph(model, (x,))
    ref = low_rank_factor(graph, rank_tol=0.0)
    d, r = 72, int(ref.rank.max())
    budget = factor_memory(2, r, d, 8)  # two examples per group at most
    parts = list(iter_packed_factors(model, (x,), rank_tol=0.0, max_memory=budget))
    assert len(parts) >= 3
    assert all(factor_memory(len(i), f.B.shape[2], d, 8) <= budget for i, f in parts)
    v = torch.randn(6, 72, dtype=torch.float64)
    torch.testing.assert_close(merge_factors(parts, 6).hvp(v), ref.hvp(v), rtol=0, atol=1e-12)


def test_reuses_the_graph_when_one_group():
    model = relu_cnn(c=5)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    graph = build_loss_graph(model, (x,))
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    costs = PassCosts(forward=1e6)  # an extra forward is never worth it
    parts = list(iter_packed_factors(model, (x,), graph=graph, rank_tol=0.0, costs=costs))
    hook.remove()
    assert len(parts) == 1 and not calls
    torch.testing.assert_close(parts[0][1].gradient, low_rank_factor(build_loss_graph(model, (x,))).gradient)


def test_budget_below_one_example_raises():
    with pytest.raises(ValueError, match="max_memory"):
        plan_rank_groups([5], d=100, itemsize=4, max_memory=100)


@given(
    ranks=st.lists(st.integers(0, 30), min_size=1, max_size=9),
    fwd=st.floats(0.1, 20.0),
    budget_rows=st.integers(1, 40),
)
def test_plan_is_optimal_partition_within_budget(ranks, fwd, budget_rows):
    d, item = 10, 4
    budget = max(factor_memory(1, max(ranks), d, item, 4), budget_rows * d * item * 8)
    costs = PassCosts(forward=fwd)
    plan = plan_rank_groups(ranks, d, item, budget, costs, vjp_batch=4)
    got = sorted(i for g in plan.groups for i in g.tolist())
    assert got == list(range(len(ranks)))
    r = torch.tensor(ranks)
    assert all(factor_memory(len(g), int(r[g].max()), d, item, 4) <= budget for g in plan.groups)
    work = sum(len(g) * (fwd + int(r[g].max()) + 1) for g in plan.groups)
    assert work == pytest.approx(plan.work)
    # never worse than one group (when it fits) or singletons
    if factor_memory(len(ranks), max(ranks), d, item, 4) <= budget:
        assert plan.work <= len(ranks) * (fwd + max(ranks) + 1) + 1e-9
    assert plan.work <= sum(fwd + k + 1 for k in ranks) + 1e-9


def test_kept_ranks_match_low_rank_factor():
    model, x = _mixed_confidence_batch()
    graph = build_loss_graph(model, (x,))
    assert torch.equal(kept_ranks(graph.probs, 1e-3, exact=True), low_rank_factor(graph, rank_tol=1e-3).rank)


@given(
    scales=st.lists(st.floats(0.05, 60.0), min_size=1, max_size=12),
    classes=st.sampled_from([5, 40, 200]),
    budget_rows=st.integers(1, 400),
    seed=st.integers(0, 1000),
)
def test_group_decision_shortcut_agrees_with_the_full_plan(scales, classes, budget_rows, seed):
    """``engine._factor_groups`` skips the dynamic programme when groups cannot pay for their forward
    passes; its answer must be the one the full plan gives (same groups, or one factor)."""
    from types import SimpleNamespace

    from captum_ext.attr.cost_model import DEFAULT_COSTS
    from captum_ext.attr.engine import _factor_groups
    from captum_ext.attr.options import CASOOptions
    from captum_ext.attr.packed_factor import factor_memory

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(scales), classes, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits * torch.tensor(scales, dtype=torch.float64)[:, None], 1)
    d = 7
    graph = SimpleNamespace(
        probs=probs,
        n=len(scales),
        inputs=(torch.zeros(len(scales), d),),
        logits=torch.zeros(1, dtype=torch.float32),
    )
    budget = budget_rows * d * 4
    opts = CASOOptions()
    ranks = kept_ranks(probs, opts.rank_tol, opts.max_rank)
    try:
        plan = plan_rank_groups(ranks, d, 4, budget)
    except ValueError:
        exact = kept_ranks(probs, opts.rank_tol, opts.max_rank, exact=True)
        if factor_memory(1, int(exact.max()), d, 4) > budget:  # no factor fits: both refuse
            with pytest.raises(ValueError, match="max_memory"):
                _factor_groups(graph, opts, budget)
            return
        plan = plan_rank_groups(exact, d, 4, budget)
    one = factor_memory(graph.n, int(plan.ranks.max()), d, 4)
    whole = len(plan.groups) == 1 or (
        one <= budget and graph.n * DEFAULT_COSTS.backward * (int(plan.ranks.max()) + 1) <= plan.work
    )
    got = _factor_groups(graph, opts, budget)
    if whole:
        assert got is None
    else:
        assert got is not None and [g.tolist() for g in got] == [g.tolist() for g in plan.groups]
