"""Curvature paths that know when they are right: no wrong answer is ever certified.

Each case is checked against a float64 dense oracle (or must be refused with a reason): custom autograd
Functions without a real double backward, MobileNetV3-style squeeze-excitation blocks, point-dependent
curvature, explicit inexact paths, compiled models, and the paper solver on sharp float32 problems.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from captum_ext import CASO
from captum_ext._autograd import NoDoubleBackwardError
from captum_ext.attr import AttributionDetails
from captum_ext.attr.curvature import GraphAnalysis, get_path, paths
from captum_ext.attr.engine import CurvaturePathError
from captum_ext.attr.hessian import ExactHessian, build_loss_graph
from captum_ext.attr.options import CAFOOptions, CASOOptions, matching_options
from captum_ext.attr.solvers import fista

from ._nets import OnceRelu, OnceTanh
from .test_caso_certified import assert_matches_oracle, scaled_mlp, stable_dense
from .test_optim import _scipy_split_solve

DT = torch.float64


class _TwiceTanh(OnceTanh):
    """The same function with a differentiable backward: double backward is real."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class _Apply(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z):
        return self.fn(z)


def _net(act: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 12), act, nn.Linear(12, 4)).double().eval()
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    return net


# ---------------------------------------------------------------- custom autograd.Function
@pytest.mark.parametrize("hessian", ["auto", "exact", "gauss_newton", "closed_form"])
def test_once_differentiable_curved_function_is_never_certified(hessian, untouched):
    model = _net(_Apply(OnceTanh.apply))
    x = torch.randn(3, 8, dtype=DT)
    with untouched(model), pytest.raises(CurvaturePathError, match="OnceTanhBackward"):
        CASO(model).attribute(x, hessian=hessian)


def test_custom_function_with_a_real_double_backward_matches_the_oracle():
    model = _net(_Apply(_TwiceTanh.apply))
    oracle = nn.Sequential(model[0], nn.Tanh(), model[2])
    x = torch.randn(3, 8, dtype=DT)
    caso = CASO(model)
    out = caso.attribute(x)
    assert caso.last_details.hessian == "exact" and "finite differences" in caso.last_details.extra["probe"]
    assert_matches_oracle(model, x, out, caso.last_details, 0.0, oracle_model=oracle)


def test_once_differentiable_piecewise_linear_function_takes_the_closed_form():
    model = _net(_Apply(OnceRelu.apply))
    oracle = nn.Sequential(model[0], nn.ReLU(), model[2])
    x = torch.randn(3, 8, dtype=DT)
    caso = CASO(model)
    out = caso.attribute(x, rank_tol=0.0)
    assert caso.last_details.hessian == "closed_form"
    assert_matches_oracle(model, x, out, caso.last_details, 0.0, oracle_model=oracle)


class _DetachedTanh(OnceTanh):
    """A backward that detaches its result: autograd's second derivative is silently zero."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g * (1 - torch.tanh(x) ** 2)).detach()


def test_zero_exact_hessian_beside_a_nonzero_gradient_is_a_contradiction():
    model = _net(_Apply(_DetachedTanh.apply))
    x = torch.randn(2, 8, dtype=DT)
    with pytest.raises(CurvaturePathError, match="DetachedTanhBackward"):
        CASO(model).attribute(x)
    exact = ExactHessian(build_loss_graph(model, (x,)))  # the operator itself refuses the silent zeros
    with pytest.raises(NoDoubleBackwardError, match="detached"):
        exact.hvp(torch.randn(2, 8, dtype=DT))


# ---------------------------------------------------------------- MobileNetV3-style block
class _ClampHardsigmoid(nn.Module):  # Hardsigmoid with a double backward (the fix the error suggests)
    def forward(self, z):
        return torch.clamp(z / 6 + 0.5, 0, 1)


class _MobileBlock(nn.Module):
    """Conv, Hardswish, squeeze-excitation gated by Hardsigmoid, linear head (MobileNetV3's pattern)."""

    def __init__(self, classes: int, gate: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 6, 3, padding=1)
        self.fc1, self.fc2, self.gate = nn.Linear(6, 4), nn.Linear(4, 6), gate
        self.head = nn.Linear(6 * 8, classes)

    def forward(self, x):
        h = nn.functional.hardswish(self.conv(x[:, None, :]))
        s = self.gate(self.fc2(torch.relu(self.fc1(h.mean(2)))))
        return self.head((h * s[:, :, None]).flatten(1))


@pytest.mark.parametrize("classes", [10, 1000])
def test_mobilenet_squeeze_excitation_is_refused_with_what_would_work(classes, untouched):
    torch.manual_seed(1)
    model = _MobileBlock(classes, nn.Hardsigmoid()).double().eval()
    with torch.no_grad():
        model.conv.weight.mul_(4)
    fixed = _MobileBlock(classes, _ClampHardsigmoid()).double().eval()
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(2, 8, dtype=DT)
    caso = CASO(fixed)
    out = caso.attribute(x)  # what the error recommends works, and is exact
    assert caso.last_details.hessian == "exact"
    assert_matches_oracle(fixed, x, out, caso.last_details, 0.0, oracle_tol=1e-10)
    L = float(caso.last_details.top_eigenvalue.max())
    for kw in (
        {},
        {"lambda2": 0.6 * L},
        {"lambda2": 0.45 * L},
        {"hessian": "closed_form"},
        {"hessian": "exact"},
    ):
        with untouched(model), pytest.raises(CurvaturePathError, match=r"HardsigmoidBackward0.*clamp") as err:
            CASO(model).attribute(x, **kw)
        assert "Paths exact here" not in str(err.value)  # no path is: none is recommended


# ---------------------------------------------------------------- per-call decision
def test_curvature_is_decided_at_every_call_not_per_input_shape():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 10), nn.Hardswish(), nn.Linear(10, 3)).double().eval()
    saturated = torch.randn(3, 6, dtype=DT) * 1e4  # every unit beyond +-3: the logits are flat here
    ordinary = torch.randn(3, 6, dtype=DT) * 0.5
    caso = CASO(model)
    caso.attribute(saturated)
    assert caso.last_details.hessian == "closed_form"  # exact at that point
    out = caso.attribute(ordinary)
    assert caso.last_details.hessian == "exact"
    assert_matches_oracle(model, ordinary, out, caso.last_details, 0.0)


# ---------------------------------------------------------------- explicit inexact paths
@pytest.mark.parametrize("hessian", ["closed_form", "gauss_newton"])
def test_explicit_inexact_path_is_refused(hessian, untouched):
    model = scaled_mlp(nn.GELU(), scale=4.0)
    x = torch.randn(3, 8, dtype=DT)
    caso = CASO(model)
    caso.attribute(x)
    L = float(caso.last_details.top_eigenvalue.max())
    for lam2 in (None, 0.48 * L):
        with (
            untouched(model),
            pytest.raises(CurvaturePathError, match=r"refused.*GeluBackward0.*\['exact'\]"),
        ):
            CASO(model).attribute(x, hessian=hessian, lambda2=lam2)


# ---------------------------------------------------------------- paper solver on sharp float32 problems
def test_paper_fista_never_raises_on_float32_round_off():
    # H = L I with lambda2 = L/2 + c1: the terms of s(D) cancel by L / c1 = 1e9, far beyond float32
    g = torch.randn(3, 1, 100, generator=torch.Generator().manual_seed(3))
    res = fista(g, lambda v: 1e6 * v, 0.0, 1e6 / 2 + 1e-3, n_iter=10, monotone=False)
    assert bool(torch.isfinite(res.delta).all()) and res.stalled is not None


def test_paper_solver_on_a_sharp_float32_net_reports_its_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(300.0)
    x = torch.randn(3, 64) * 0.01
    caso = CASO(model)
    out = caso.attribute(x, solver="paper", c1=1e-3, lambda1=1e-3, hessian="closed_form")
    det = caso.last_details
    model64 = copy.deepcopy(model).double()
    err = []
    for i in range(3):  # the float64 optimum of the problem the paper solver was given (same lambda2)
        H, g = stable_dense(model64, x[i].double(), int(det.target[i]))
        ref = torch.from_numpy(_scipy_split_solve(g, H, 1e-3, float(det.lambda2[i])))
        err.append(float((out[i].double() - ref).norm() / ref.norm()))
    err = torch.tensor(err, dtype=DT)
    assert not bool(det.converged.any())
    # scipy's answer is good to ~1e-6 relative, far below the errors compared (0.09 to 1: ten paper
    # iterations are far from the optimum of this sharp problem)
    assert bool((err > 1e-3).all())
    assert bool((det.error_bound.double() >= err).all()), (err, det.error_bound)


# ---------------------------------------------------------------- torch.compile
@pytest.mark.slow
def test_compiled_models_are_differentiated_through_their_eager_original():
    torch.manual_seed(4)
    relu = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).double().eval()
    gelu = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 3)).double().eval()
    x = torch.randn(3, 6, dtype=DT)
    ref = CASO(relu).attribute(x)
    compiled = torch.compile(relu, backend="aot_eager")
    caso = CASO(compiled)
    torch.testing.assert_close(caso.attribute(x), ref, rtol=1e-12, atol=1e-14)
    assert caso.last_details.hessian == "closed_form" and "eager" in caso.last_details.extra["compiled"]
    # hidden behind a lambda: the closed form needs first derivatives only, and finite differences
    # prove the logits flat
    caso = CASO(lambda z: compiled(z))
    torch.testing.assert_close(caso.attribute(x), ref, rtol=1e-12, atol=1e-14)
    assert caso.last_details.hessian == "closed_form"
    gcomp = torch.compile(gelu, backend="aot_eager")
    torch.testing.assert_close(CASO(gcomp).attribute(x), CASO(gelu).attribute(x), rtol=1e-12, atol=1e-14)
    with pytest.raises(CurvaturePathError, match="_orig_mod"):
        CASO(lambda z: gcomp(z)).attribute(x)
    # a compiled graph that has seen several batch sizes donates its buffers: its backward runs once,
    # which an opaque callable cannot hide; the error says what to pass instead
    for m in (1, 2):
        compiled(torch.randn(m, 6, dtype=DT))
    with pytest.raises(RuntimeError, match="donates its buffers"):
        CASO(lambda z: compiled(z)).attribute(torch.randn(5, 6, dtype=DT))
    torch.testing.assert_close(CASO(compiled).attribute(x), ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- structure
def test_each_path_states_when_it_is_exact():
    flat = GraphAnalysis(True, True, "structural")
    curved = GraphAnalysis(False, True, "structural", curved_because="it has GeluBackward0")
    no_second = GraphAnalysis(True, False, "structural", no_double_backward_because="Hardsigmoid")
    exact_for = {
        name: [path.not_exact_because(a) is None for a in (flat, curved, no_second)]
        for name, path in paths().items()
    }
    assert exact_for == {
        "closed_form": [True, False, True],
        "gauss_newton": [True, False, False],
        "exact": [True, True, False],
    }
    with pytest.raises(ValueError, match="'auto', 'closed_form', 'gauss_newton', 'exact'"):
        get_path("dense")


def test_options_are_validated_once_and_match_the_signatures():
    opts = CASOOptions(lambda1=torch.tensor([0.0, 1e-3, 1e-2], dtype=DT))
    assert dataclasses.is_dataclass(opts)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.c1 = 1.0  # type: ignore[misc]
    assert opts.for_examples(1, 3, 3).lambda1.tolist() == [1e-3, 1e-2]
    with pytest.raises(ValueError, match="max_iter"):
        CASOOptions(max_iter=0)
    with pytest.raises(TypeError, match=r"missing \['sparsity'\]"):

        @matching_options(CAFOOptions)
        def attribute(inputs, *, lambda1=0.0, lambda2=None, c1=10.0, orientation="captum"): ...


def test_details_take_selects_examples_in_order():
    caso = CASO(_net(nn.ReLU()))
    caso.attribute(torch.randn(4, 8, dtype=DT), lambda1=torch.tensor([0.0, 1e-3, 2e-3, 3e-3]))
    det = caso.last_details
    part = det.take(torch.tensor([3, 1]))
    assert isinstance(part, AttributionDetails)
    assert part.lambda1.tolist() == [det.lambda1[3].item(), det.lambda1[1].item()]
    assert part.hessian == det.hessian and part.converged.shape == (2,)
