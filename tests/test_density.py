"""Density-ratio curves of the implicit density model (Srinivas & Fleuret, Sec. 5.1.1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from captum_ext.metrics.density import DensityRatioCurve, density_ratio_curve

DT = torch.float64


def test_linear_model_matches_lognormal_mean():
    """f_y(x+η) − f_y(x) = w_yᵀη ~ N(0, σ²‖w_y‖²), so E[ratio] = exp(σ²‖w_y‖²/2), E[log] = 0."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).to(DT)
    x = torch.randn(12, 5, dtype=DT)
    y = torch.arange(12) % 3
    sigmas = [0.1, 0.5, 1.0]
    curve = density_ratio_curve(lin, x, sigmas, target=y, n_samples=4000, max_examples_per_batch=5)
    wnorm2 = lin.weight.detach().pow(2).sum(1)[y]
    for k, s in enumerate(sigmas):
        expected = float(torch.exp(0.5 * s**2 * wnorm2).mean())
        # per-example standard deviation of the Monte-Carlo mean of a log-normal
        var = torch.exp(s**2 * wnorm2) * (torch.exp(s**2 * wnorm2) - 1) / 4000
        tol = 5 * float(var.mean().sqrt()) / math.sqrt(12) + 1e-12
        assert float(curve.mean_ratio[k]) == pytest.approx(expected, abs=tol)
        log_sd = s * float(wnorm2.sqrt().max()) / math.sqrt(4000 * 12)
        assert abs(float(curve.mean_log_ratio[k])) < 5 * log_sd
    assert curve.n_examples == 12 and curve.n_samples == 4000
    assert curve.sigmas.dtype == DT and curve.mean_ratio.shape == (3,)


def test_constant_logits_give_ratio_one():
    class Const(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 2.0]], dtype=x.dtype).expand(x.shape[0], 2)

    curve = density_ratio_curve(Const(), torch.randn(7, 3), torch.tensor([1e-3, 10.0]), target=1)
    assert torch.equal(curve.mean_ratio, torch.ones(2, dtype=DT))
    assert torch.equal(curve.sem, torch.zeros(2, dtype=DT))
    assert torch.equal(curve.mean_log_ratio, torch.zeros(2, dtype=DT))


def test_quadratic_logit_gives_exact_ratio_growth_direction():
    """f_y(x) = −‖x‖²: noise lowers the density, so every ratio is below one and falls with σ."""

    class Bowl(nn.Module):
        def forward(self, x):
            v = -x.pow(2).sum(1, keepdim=True)
            return torch.cat([v, -v], 1)

    curve = density_ratio_curve(Bowl(), torch.zeros(4, 6), [0.01, 0.1, 1.0], target=0, n_samples=50)
    assert bool((curve.mean_ratio < 1).all())
    assert bool((curve.mean_ratio[1:] < curve.mean_ratio[:-1]).all())
    # at x = 0 the log ratio is −‖η‖², whose mean is −dσ²
    assert float(curve.mean_log_ratio[2]) == pytest.approx(-6.0, rel=0.1)


def test_deterministic_given_seed_and_model_untouched(untouched):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Softplus(), nn.Linear(6, 3))
    net.eval()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    x = torch.randn(9, 4)
    with untouched(net):
        a = density_ratio_curve(net, x, [0.1, 1.0], target=[0, 1, 2] * 3, n_samples=3, seed=5)
        b = density_ratio_curve(net, x, [0.1, 1.0], target=[0, 1, 2] * 3, n_samples=3, seed=5)
        c = density_ratio_curve(net, x, [0.1, 1.0], target=[0, 1, 2] * 3, n_samples=3, seed=6)
    assert torch.equal(a.mean_ratio, b.mean_ratio)
    assert not torch.equal(a.mean_ratio, c.mean_ratio)
    net.train()
    with untouched(net), pytest.raises(ValueError, match="training mode"):
        density_ratio_curve(net, x, [0.1], target=0)


class TwoInputs(nn.Module):
    def forward(self, a, b, scale):
        return torch.stack([a.sum(1) * scale, b.sum(1)], 1)


def test_tuple_inputs_and_additional_args():
    a, b = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    scale = torch.arange(5, dtype=DT) / 2
    curve = density_ratio_curve(
        TwoInputs(),
        (a, b),
        [0.3],
        target=0,
        n_samples=4000,
        max_examples_per_batch=2,
        additional_forward_args=(scale,),
    )
    # class 0 logit = scale·Σa: log ratio ~ N(0, 3σ²scale²), mean ratio exp(1.5σ²scale²)
    expected = float(torch.exp(1.5 * 0.09 * scale**2).mean())
    assert float(curve.mean_ratio[0]) == pytest.approx(expected, rel=0.02)
    # a wrong row/argument alignment would give the mean over the scales' average instead
    wrong = float(torch.exp(1.5 * 0.09 * scale.mean() ** 2))
    assert abs(float(curve.mean_ratio[0]) - wrong) > 0.05


def test_validation_and_plot():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="sigmas"):
        density_ratio_curve(lin, x, [], target=0)
    with pytest.raises(ValueError, match="sigmas"):
        density_ratio_curve(lin, x, [0.1, -1.0], target=0)
    with pytest.raises(ValueError, match="n_samples"):
        density_ratio_curve(lin, x, [0.1], target=0, n_samples=0)
    with pytest.raises(ValueError, match="entries"):
        density_ratio_curve(lin, x, [0.1], target=[0, 1])
    curve = density_ratio_curve(lin, x, [0.01, 0.1, 1.0], target=1)
    assert isinstance(curve, DensityRatioCurve)
    d = curve.to_dict()
    assert len(d["sigmas"]) == 3 and d["n_examples"] == 4
    import matplotlib

    matplotlib.use("Agg")
    ax = curve.plot(label="linear")
    assert ax.get_xscale() == "log"
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_density_on_cuda():
    lin = nn.Linear(3, 2).cuda()
    curve = density_ratio_curve(lin, torch.randn(6, 3, device="cuda"), [0.1, 1.0], target=0)
    assert curve.mean_ratio.device.type == "cpu" and bool(torch.isfinite(curve.mean_ratio).all())


def test_the_curve_does_not_depend_on_the_batch_size():
    """With several noise samples the draws once followed the batching (mean ratio 1.0115 vs 1.0002)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(10, 6, dtype=torch.float64)
    ref = density_ratio_curve(net, x, [0.1, 0.5], target=0, n_samples=4, seed=3)
    for bs in (1, 3, 7):
        res = density_ratio_curve(
            net, x, [0.1, 0.5], target=0, n_samples=4, seed=3, max_examples_per_batch=bs
        )
        # float64, per-example rows: batching changes the matmul blocking at most in the last bits
        torch.testing.assert_close(res.ratios, ref.ratios, rtol=0, atol=1e-13)
    other = density_ratio_curve(net, x, [0.1, 0.5], target=0, n_samples=4, seed=4)
    assert not torch.allclose(other.ratios, ref.ratios)  # the seed still matters
