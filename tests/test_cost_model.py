"""Cost model: predictions follow the documented formulas; the choice is the cheapest correct fit."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from captum_ext import CASO
from captum_ext.attr.cost_model import (
    PATHS,
    PassCosts,
    PathCost,
    calibrate_pass_costs,
    choose_path,
    default_max_memory,
    expected_products,
    kept_ranks,
    plan_auto,
    predict_costs,
)
from captum_ext.attr.hessian import build_loss_graph
from captum_ext.attr.packed_factor import factor_memory

from ._nets import relu_cnn


def test_formulas():
    costs = PassCosts(forward=2.0, backward=1.5, jvp=4.0, double_backward=7.0, eigh=0.5)
    pc = predict_costs([3, 1], d=10, products=5, costs=costs, itemsize=8, vjp_batch=2)
    assert pc["closed_form"].time == pytest.approx((3 + 1) * 1.5 + 2 * 1.5 + 2 * 0.5)
    assert pc["closed_form"].memory == 4 * 10 * 8 + 2 * 2 * 10 * 8
    assert pc["gauss_newton"].time == pytest.approx(2 * 2 * 1.5 + 5 * 2 * (4.0 + 1.5))
    assert pc["exact"].time == pytest.approx(2 * 1.5 + 5 * 2 * 7.0)  # gradient pass, then products
    unpacked = predict_costs([3, 1], d=10, products=5, costs=costs, itemsize=8, vjp_batch=2, packed=False)
    assert unpacked["closed_form"].time == pytest.approx(2 * 3 * 1.5 + 2 * 1.5 + 2 * 0.5)
    assert all(pc[p].correct for p in PATHS)
    smooth = predict_costs([3, 1], d=10, products=5, piecewise_linear=False)
    assert [p for p in PATHS if smooth[p].correct] == ["exact"]


def test_expected_products():
    assert expected_products() == 3  # one Lanczos run gives L and the solve
    assert expected_products(lambda1_values=2) == 8 + 2 * 5
    assert expected_products(lambda1_values=8, lambda1_zero=False) == 8 + 8 * 30
    assert expected_products(solver="paper", n_power_iter=10, n_iter=10) == 22
    with pytest.raises(ValueError):
        expected_products(n_iter=-1)
    with pytest.raises(ValueError, match="solver"):
        expected_products(solver="fast")


def test_choice_at_low_and_high_confidence_1000_classes():
    d = 3 * 224 * 224
    high = predict_costs([1], d=d, products=expected_products())
    low = predict_costs([999], d=d, products=expected_products())
    assert choose_path(high).path == "closed_form"
    # matrix-free at low confidence; exact's one setup pass beats Gauss-Newton's two for a few products
    assert choose_path(low).path == "exact"
    many = predict_costs([999], d=d, products=expected_products(lambda1_values=8, lambda1_zero=False))
    assert choose_path(many).path == "gauss_newton"  # ~0.2 backward passes cheaper per product
    # a budget too small for the factor moves the choice even when the factor is cheapest
    mid = predict_costs([10], d=d, products=expected_products())
    assert choose_path(mid).path == "closed_form"
    assert choose_path(mid, max_memory=mid["closed_form"].memory - 1).path == "exact"


def test_no_fit_returns_smallest_memory_and_no_correct_raises():
    preds = {
        "exact": PathCost("exact", 1.0, 100, True),
        "closed_form": PathCost("closed_form", 0.5, 50, False),
    }
    assert choose_path(preds, max_memory=10).path == "exact"
    with pytest.raises(ValueError, match="correct"):
        choose_path({"closed_form": PathCost("closed_form", 0.5, 50, False)})


@given(
    ranks=st.lists(st.integers(0, 999), min_size=1, max_size=8),
    products=st.integers(0, 200),
    budget=st.one_of(st.none(), st.integers(1, 10**10)),
    smooth=st.booleans(),
)
def test_choice_is_never_predicted_slower_than_a_correct_fitting_path(ranks, products, budget, smooth):
    pc = predict_costs(ranks, d=1000, products=products, piecewise_linear=not smooth)
    chosen = choose_path(pc, budget)
    assert chosen.correct
    for p in pc.values():
        if p.correct and (budget is None or p.memory <= budget):
            assert chosen.time <= p.time
            assert budget is None or chosen.memory <= budget


def test_plan_auto_reports_its_choice():
    confident = torch.softmax(torch.tensor([[30.0, 20.0] + [0.0] * 998], dtype=torch.float64), 1)
    plan = plan_auto(confident, d=3 * 224 * 224, itemsize=4, piecewise_linear=True, products=13)
    assert plan.path == "closed_form" and plan.ranks.tolist()[0] in (1, 2)  # exact rank 1, bound <= 2
    summary = plan.summary()
    assert summary["choice"] == "closed_form" and set(summary["predicted_cost"]) == set(PATHS)
    smooth = plan_auto(confident, d=10, itemsize=4, piecewise_linear=False, products=13)
    assert smooth.path == "exact"
    # a budget below the factor's predicted memory but above the iterates' switches to the matrix-free path
    tight = plan_auto(confident, 150528, 4, True, 13, max_memory=plan.predictions["closed_form"].memory - 1)
    assert plan.predictions["gauss_newton"].memory < plan.predictions["closed_form"].memory
    assert tight.path == "gauss_newton"


@given(scale=st.floats(0.01, 60.0), tol=st.sampled_from([1e-2, 1e-3, 1e-6]), seed=st.integers(0, 99))
def test_fast_rank_bound_is_exact_or_one_more(scale, tol, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(scale * torch.randn(3, 50, generator=gen, dtype=torch.float64), 1)
    fast, exact = kept_ranks(p, tol), kept_ranks(p, tol, exact=True)
    assert bool(((fast - exact) >= 0).all() and ((fast - exact) <= 1).all())


def test_invalid_inputs():
    with pytest.raises(ValueError, match="jvp"):
        PassCosts(jvp=0.0)
    with pytest.raises(ValueError, match="ranks"):
        predict_costs([], d=3, products=1)
    with pytest.raises(ValueError, match="products"):
        predict_costs([1], d=3, products=-1)


def test_default_max_memory_is_positive_and_bounded():
    m = default_max_memory("cpu")
    assert 0 < m <= 8 * 2**30


def test_calibration_returns_positive_relative_costs():
    graph = build_loss_graph(relu_cnn(c=5), (torch.randn(2, 2, 6, 6, dtype=torch.float64),))
    costs = calibrate_pass_costs(graph)
    assert costs.backward == 1.0 and costs.jvp > 0 and costs.double_backward > 0


# ---------------------------------------------------------------------------- CASO(hessian="auto")
def _thousand_class_net(scale: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1000))
    model = model.double().eval()
    with torch.no_grad():
        model[2].weight.mul_(scale)
        model[2].bias.mul_(scale)
    return model


@pytest.mark.parametrize(("scale", "expected"), [(0.01, "exact"), (1000.0, "closed_form")])
def test_auto_follows_the_cost_model_at_low_and_high_confidence(scale, expected, untouched):
    model = _thousand_class_net(scale)
    x = torch.randn(2, 12, dtype=torch.float64)
    caso = CASO(model)
    with untouched(model):
        attr = caso.attribute(x, rank_tol=0.0)
    det = caso.last_details
    probs = torch.softmax(model(x).detach(), 1)
    plan = plan_auto(probs, 12, 8, True, expected_products(), rank_tol=0.0)
    assert det.hessian == plan.path == expected
    assert det.extra["auto"]["choice"] == expected
    chosen = det.extra["auto"]["predicted_cost"]
    assert chosen[expected] == min(chosen.values())  # never a path it predicts to be slower
    assert 0.0 <= det.extra["auto"]["planning_s"] < float("inf")  # its own time is reported
    # every correct path gives the same optimum (each certified to relative error 1e-8 in float64)
    for path in ("closed_form", "gauss_newton", "exact"):
        other = CASO(model).attribute(x, hessian=path, rank_tol=0.0)
        assert float((other - attr).norm() / attr.norm()) < 1e-7


def test_auto_on_a_curved_net_takes_exact_and_probes_on_every_call():
    torch.manual_seed(0)
    # sin is not in the graph walk's tables, so auto has to probe the curvature numerically
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), _Sin(), torch.nn.Linear(16, 1000))
    model = model.double().eval()
    caso = CASO(model)
    x = torch.randn(2, 12, dtype=torch.float64)
    caso.attribute(x)
    assert caso.last_details.hessian == "exact" and caso.last_details.probe_gap is not None
    caso.attribute(x)  # curvature depends on the point: decided again, never reused from a cache
    assert caso.last_details.hessian == "exact" and caso.last_details.probe_gap is not None
    assert caso.last_details.extra["probe"] == "numeric (graph has SinBackward0)"


def test_memory_budget_is_respected_without_changing_the_result():
    model = _thousand_class_net(3.0)
    x = torch.randn(4, 12, dtype=torch.float64)
    ref = CASO(model).attribute(x, hessian="closed_form", rank_tol=0.0)
    caso = CASO(model)
    ranks = kept_ranks(torch.softmax(model(x).detach(), 1), 0.0, exact=True)
    budget = factor_memory(1, int(ranks.max()), 12, 8)  # one example's factor at a time
    out = caso.attribute(x, hessian="closed_form", rank_tol=0.0, max_memory=budget)
    assert caso.last_details.extra["factor_groups"] == [1, 1, 1, 1]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert torch.equal(caso.last_details.rank, ranks)
    # auto with a budget below the factor switches to the matrix-free path: same optimum
    out = caso.attribute(x, rank_tol=0.0, max_memory=budget - 1)
    assert caso.last_details.hessian == "exact"
    assert float((out - ref).norm() / ref.norm()) < 1e-7  # certified: relative error <= 1e-8 each
    with pytest.raises(ValueError, match="max_memory"):
        caso.attribute(x, max_memory=0)
    with pytest.raises(ValueError, match="max_memory"):  # one example's factor does not fit
        caso.attribute(x[:1], hessian="closed_form", rank_tol=0.0, max_memory=100)
    with pytest.warns(UserWarning, match="max_memory"):  # nothing fits: auto says so
        caso.attribute(x[:1], rank_tol=0.0, max_memory=100)


class _Sin(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)
