"""The structural curvature probe: never says "piecewise linear" where the logits are curved."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from captum_ext import CASO
from captum_ext.attr.hessian import (
    build_loss_graph,
    logit_curvature_gap,
    structural_curvature,
    structural_piecewise_linear,
)

torch.set_num_threads(1)


class _Residual(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        t = x.reshape(x.shape[0], 3, 4)
        w = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2), -1)
        return self.out((w @ t).reshape(x.shape[0], -1))


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.lin = nn.Linear(12, 3)

    def forward(self, x):
        return self.lin(self.fn(x.reshape(x.shape[0], -1)))


def _cnn(act: nn.Module, pool: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, pool, nn.Flatten(), nn.LazyLinear(3))


def _models() -> dict[str, tuple[nn.Module, bool]]:
    """name -> (model on (n, 3, 2, 2) inputs, truly piecewise linear)"""
    flat = nn.Flatten()
    return {
        "relu_mlp": (nn.Sequential(flat, nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)), True),
        "leaky_relu6": (
            nn.Sequential(flat, nn.Linear(12, 6), nn.LeakyReLU(0.1), nn.ReLU6(), nn.Linear(6, 3)),
            True,
        ),
        "cnn_maxpool": (_cnn(nn.ReLU(), nn.MaxPool2d(2)), True),
        "cnn_avgpool": (_cnn(nn.ReLU(), nn.AvgPool2d(2)), True),
        "resnet_block_eval_bn": (
            nn.Sequential(nn.Conv2d(3, 4, 1), _Residual(4), nn.AdaptiveAvgPool2d(1), flat, nn.Linear(4, 3)),
            True,
        ),
        "log_softmax_head": (
            nn.Sequential(flat, nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3), nn.LogSoftmax(1)),
            True,
        ),
        "gelu": (nn.Sequential(flat, nn.Linear(12, 6), nn.GELU(), nn.Linear(6, 3)), False),
        "softplus": (nn.Sequential(flat, nn.Linear(12, 6), nn.Softplus(), nn.Linear(6, 3)), False),
        "tanh": (nn.Sequential(flat, nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3)), False),
        "elu": (nn.Sequential(flat, nn.Linear(12, 6), nn.ELU(), nn.Linear(6, 3)), False),
        "layer_norm": (nn.Sequential(flat, nn.Linear(12, 6), nn.LayerNorm(6), nn.Linear(6, 3)), False),
        "attention": (_Attention(), False),
        "x_times_x": (_Lambda(lambda t: t * t), False),
        "x_over_x_norm": (_Lambda(lambda t: t / t.norm(dim=1, keepdim=True)), False),
        "x_times_relu_x": (_Lambda(lambda t: t * torch.relu(t)), False),
    }


def _dense_logit_curvature(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |second derivative| of any logit of the first example (dense autograd Hessian)."""
    worst = 0.0
    for k in range(3):
        hess = torch.autograd.functional.hessian(lambda z, k=k: model(z)[0, k] - model(z)[0].mean(), x[:1])
        worst = max(worst, float(hess.abs().max()))
    return worst


@pytest.mark.parametrize("name", sorted(_models()))
def test_structural_probe_is_sound_against_dense_hessian(name):
    torch.manual_seed(0)
    model, truly_pl = _models()[name]
    model = model.double().eval()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    model(x)  # materialise lazy layers
    with torch.no_grad():  # non-trivial eval-mode batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    pl, reason = structural_piecewise_linear(build_loss_graph(model, (x,)))
    curvature = _dense_logit_curvature(model, x)
    if pl:  # soundness: "piecewise linear" only where the dense Hessian is zero
        assert curvature == 0.0, (name, reason)
    else:
        assert curvature > 1e-8 or not truly_pl, (name, reason)
    # every truly piecewise-linear model here is recognised, every curved one is not
    assert pl == truly_pl, (name, reason)
    graph = build_loss_graph(model, (x,))
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    gap = logit_curvature_gap(graph, v, w - w.mean(1, keepdim=True))
    assert bool((gap <= 1e-9).all()) == truly_pl  # the numeric probe agrees


def test_train_mode_batch_norm_is_not_piecewise_linear():
    x = torch.randn(4, 3, dtype=torch.float64)
    stats = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def f(z, training):
        return torch.nn.functional.batch_norm(z, *stats, training=training)

    assert structural_piecewise_linear(build_loss_graph(lambda z: f(z, False), (x,)))[0]
    pl, reason = structural_piecewise_linear(build_loss_graph(lambda z: f(z, True), (x,)))
    assert not pl and reason == "NativeBatchNormBackward0"


def test_product_of_two_inputs_is_not_piecewise_linear():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    pl, reason = structural_piecewise_linear(build_loss_graph(lambda u, v: u * v, (a, b)))
    assert not pl and reason == "MulBackward0"
    assert structural_piecewise_linear(build_loss_graph(lambda u, v: u * 2.0 + v, (a, b)))[0]


def test_auto_reports_which_probe_decided(untouched):
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    gelu = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    with untouched(relu):
        caso = CASO(relu)
        ref = CASO(relu).attribute(x, hessian="closed_form")
        out = caso.attribute(x)
    assert caso.last_details.extra["probe"] == "structural"
    assert caso.last_details.hessian == "closed_form"
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    with untouched(gelu):  # a known smooth operation: curved, decided from the graph without a probe
        caso = CASO(gelu)
        caso.attribute(x)
        assert caso.last_details.extra["probe"] == "structural (smooth: GeluBackward0)"
        assert caso.last_details.hessian == "exact" and caso.last_details.probe_gap is None
    sine = nn.Sequential(nn.Linear(6, 5), _Sin(), nn.Linear(5, 3)).double().eval()
    with untouched(sine):  # an operation the graph walk does not know: one numeric probe on every call
        caso = CASO(sine)
        caso.attribute(x)
        assert caso.last_details.extra["probe"].startswith("numeric (graph has SinBackward0")
        assert caso.last_details.hessian == "exact"
        caso.attribute(x)
        assert caso.last_details.extra["probe"].startswith("numeric (graph has SinBackward0")


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), "smooth"),
        (lambda: nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)), "smooth"),
        (lambda: nn.Sequential(nn.Linear(6, 5), _Sin(), nn.Linear(5, 3)), "unknown"),
        (lambda: _Encoder(), "smooth"),  # LayerNorm, softmax and Q K^T: curved, no probe needed
        (lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "piecewise_linear"),
    ],
)
def test_structural_curvature_classes_and_smooth_nets_are_curved(make, kind):
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):  # attention's double backward (as CASO runs it)
        graph = build_loss_graph(model, (x,))
        got, names = structural_curvature(graph)
    assert got == kind and (not names) == (kind == "piecewise_linear")
    if kind == "smooth":  # "smooth" must only be said of nets the numeric probe finds curved
        g = torch.Generator().manual_seed(1)
        v = torch.randn(3, 6, generator=g, dtype=torch.float64)
        w = torch.randn(3, 3, generator=g, dtype=torch.float64)
        w = w - w.mean(1, keepdim=True)
        with sdpa_kernel(SDPBackend.MATH):
            assert bool((logit_curvature_gap(graph, v, w) > 1e-6).all())


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.layer(x.view(x.shape[0], 1, 6).expand(-1, 2, -1)).mean(1))
