"""Taylor trace estimator, score matching, anti-score matching, gradient norm (Srinivas & Fleuret)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from captum_ext.regularizers import (
    AntiScoreMatching,
    GradientNormRegularizer,
    ScoreMatching,
    relu_to_softplus,
    taylor_trace,
)

DT = torch.float64


def quadratic(d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=DT)
    A = a + a.T
    b = torch.randn(d, generator=gen, dtype=DT)

    def f(x):  # f(x) = ½ xᵀAx + bᵀx + 3, Hessian A
        return 0.5 * ((x @ A) * x).sum(1) + x @ b + 3.0

    return f, A, b


def softplus_net(d: int = 5, c: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, c))
    return relu_to_softplus(net, beta=2.0).to(DT).eval()


# ---------------------------------------------------------------------------------------------
# taylor_trace
# ---------------------------------------------------------------------------------------------
@settings(max_examples=15)
@given(
    seed=st.integers(0, 1000),
    d=st.integers(1, 6),
    sigma=st.floats(0.01, 3.0),
    n_samples=st.integers(1, 5),
    n=st.integers(1, 4),
)
def test_taylor_trace_has_no_taylor_error_on_a_quadratic(seed, d, sigma, n_samples, n):
    """For a quadratic, every sample equals (2/σ²)(∇fᵀv + ½vᵀAv) exactly: no higher-order error."""
    f, A, b = quadratic(d, seed)
    x = torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    est = taylor_trace(
        f, x, sigma, n_samples, estimator="one_sided", generator=torch.Generator().manual_seed(seed)
    )
    v = sigma * torch.randn((n_samples, n, d), generator=torch.Generator().manual_seed(seed), dtype=DT)
    g = x @ A + b
    per_sample = (2 / sigma**2) * ((g * v).sum(-1) + 0.5 * ((v @ A) * v).sum(-1))
    assert torch.allclose(est, per_sample.mean(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed,sigma", [(0, 0.05), (1, 0.5), (2, 2.0)])
def test_taylor_trace_is_unbiased_on_a_quadratic(seed, sigma):
    f, A, _ = quadratic(4, seed)
    x = torch.randn(1, 4, dtype=DT).expand(4000, 4)
    est = taylor_trace(f, x, sigma, n_samples=10, estimator="one_sided")  # 40 000 samples in total
    sem = est.std() / est.numel() ** 0.5
    assert abs(float(est.mean() - torch.trace(A))) < 4 * float(sem)
    # the estimator's variance has the documented extra term of at most 4σ⁻²‖∇f‖² (App. B)
    hutch_var = 2 * float((A**2).sum())
    extra = 4 / sigma**2 * float((x[0] @ A + quadratic(4, seed)[2]).pow(2).sum())
    assert float(est.var()) * 10 <= 1.2 * (hutch_var + extra) + 1e-9


def even_softplus_net() -> nn.Module:
    """Softplus net whose logits are even functions (rows of W in ± pairs, zero bias).

    Near 0 the logit-gradients are small, so the estimator's variance (∝ ‖∇f‖²/σ², App. B) stays
    small and the test can reach small σ cheaply; the Hessian trace is far from zero.
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    net = relu_to_softplus(net, beta=1.0).to(DT).eval()
    with torch.no_grad():
        w = torch.randn(8, 5, dtype=DT)
        net[0].weight.copy_(torch.cat([w, -w]))
        net[0].bias.zero_()
        a = torch.randn(3, 8, dtype=DT)
        net[2].weight.copy_(torch.cat([a, a], 1))
    return net


def test_taylor_trace_converges_to_exact_hessian_trace_of_softplus_net():
    net = even_softplus_net()
    x0 = 0.1 * torch.randn(1, 5, dtype=DT)

    def f(x):
        return net(x)[:, 1]

    hess = torch.autograd.functional.hessian(lambda z: f(z.unsqueeze(0)).sum(), x0[0])
    exact = float(torch.trace(hess))
    assert abs(exact) > 1.0  # a non-trivial target
    gen = torch.Generator().manual_seed(0)
    errors = []
    for sigma, n in [(1.0, 1_000), (0.3, 10_000), (0.1, 100_000), (0.03, 300_000)]:
        est = taylor_trace(f, x0.expand(n, 5), sigma, 1, estimator="one_sided", generator=gen)
        errors.append(abs(float(est.detach().mean()) - exact))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[0] > 0.1 * abs(exact)  # large sigma: visible Taylor (bias) error
    assert errors[-1] < 0.02 * abs(exact), (exact, errors)


# ---------------------------------------------------------------------------------------------
# the antithetic (noise-reduced) estimator
# ---------------------------------------------------------------------------------------------
@settings(max_examples=15)
@given(
    seed=st.integers(0, 1000),
    d=st.integers(1, 6),
    sigma=st.floats(0.01, 3.0),
    n_samples=st.integers(1, 5),
    n=st.integers(1, 4),
)
def test_antithetic_sample_is_hutchinson_sample_on_a_quadratic(seed, d, sigma, n_samples, n):
    """For a quadratic each ±v pair gives exactly vᵀAv/σ²: the gradient term cancels per sample."""
    f, A, b = quadratic(d, seed)
    x = torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    est = taylor_trace(f, x, sigma, n_samples, generator=torch.Generator().manual_seed(seed))
    v = sigma * torch.randn((n_samples, n, d), generator=torch.Generator().manual_seed(seed), dtype=DT)
    per_sample = ((v @ A) * v).sum(-1) / sigma**2
    # float64 rounding of f(x±v) - f(x), divided by σ² >= 1e-4, stays far below 1e-7
    assert torch.allclose(est, per_sample.mean(0), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seed,sigma", [(0, 0.01), (1, 0.5)])
def test_antithetic_is_unbiased_and_its_variance_ignores_the_gradient(seed, sigma):
    f, A, b = quadratic(4, seed)
    x = torch.randn(1, 4, dtype=DT).expand(4000, 4)

    def steep(z):  # same Hessian, gradient 1000 times larger
        return f(z) + 1000.0 * (z @ b)

    gen = torch.Generator().manual_seed(seed)
    est = taylor_trace(f, x, sigma, n_samples=5, generator=gen)
    est_steep = taylor_trace(steep, x, sigma, n_samples=5, generator=torch.Generator().manual_seed(seed))
    one_sided = taylor_trace(steep, x, sigma, n_samples=5, estimator="one_sided", generator=gen)
    sem = est.std() / est.numel() ** 0.5
    assert abs(float(est.mean() - torch.trace(A))) < 4 * float(sem)
    # variance of a mean of 5 Gaussian-Hutchinson samples: 2‖A‖_F² / 5, whatever σ and ‖∇f‖
    hutch_var = 2 * float((A**2).sum()) / 5
    assert 0.85 * hutch_var < float(est.var()) < 1.15 * hutch_var
    assert torch.allclose(est_steep, est, rtol=1e-6, atol=1e-6 / sigma**2)
    # the one-sided estimator carries the 4‖∇f‖²/σ² term (App. B): orders of magnitude larger here
    grad_sq = float((x[0] @ A + 1001.0 * b).pow(2).sum())
    expected = (4 * grad_sq / sigma**2) / 5 + hutch_var
    assert 0.85 * expected < float(one_sided.var()) < 1.15 * expected


def dense_trace_and_grad(net: nn.Module, x0: torch.Tensor, cls: int) -> tuple[float, float, float]:
    """Exact tr∇²f, ‖∇²f‖_F² and ‖∇f‖² of the logit ``cls`` at one point (dense autograd Hessian)."""

    def f(z):
        return net(z.unsqueeze(0))[0, cls]

    hess = torch.autograd.functional.hessian(f, x0)
    g = torch.autograd.functional.jacobian(f, x0)
    return float(torch.trace(hess)), float((hess**2).sum()), float(g.pow(2).sum())


def test_antithetic_matches_dense_hessian_trace_and_variance_does_not_scale_with_grad_over_sigma():
    """Tiny float64 Softplus net: unbiased up to O(σ²) and variance ≈ Hutchinson's at every σ.

    The one-sided estimator's variance grows like 4‖∇f‖²/σ² (App. B) as σ shrinks; the antithetic
    one stays at Hutchinson's 2‖∇²f‖_F² (Gaussian probes).
    """
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 16), nn.Softplus(beta=1.0), nn.Linear(16, 3)).to(DT)
    with torch.no_grad():  # larger weights: a clear gradient and curvature
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
    x0 = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(4))
    trace, frob_sq, grad_sq = dense_trace_and_grad(net, x0, 1)
    assert grad_sq > 1 and abs(trace) > 0.5  # a non-trivial target with a gradient

    def f(z):
        return net(z)[:, 1].detach()

    n = 20_000
    hutch_var = 2 * frob_sq
    for sigma in (0.1, 0.03, 0.01):
        gen = torch.Generator().manual_seed(int(1 / sigma))
        est = taylor_trace(f, x0.expand(n, 5), sigma, 1, generator=gen)
        sem = float(est.std()) / n**0.5
        assert abs(float(est.mean()) - trace) < 4 * sem + 0.02 * abs(trace), (sigma, float(est.mean()), trace)
        assert 0.8 * hutch_var < float(est.var()) < 1.25 * hutch_var, (sigma, float(est.var()), hutch_var)
        one = taylor_trace(f, x0.expand(n, 5), sigma, 1, estimator="one_sided", generator=gen)
        theory = 4 * grad_sq / sigma**2 + hutch_var
        assert 0.8 * theory < float(one.var()) < 1.25 * theory, (sigma, float(one.var()), theory)


def test_antithetic_float32_rounding_is_small_at_the_default_sigma():
    """Float32, logits around 10: at σ = 0.01 the rounding error of one ±v pair (~|f|·1e-7/σ² = 0.01)
    adds nothing visible to the estimator's spread, which stays Hutchinson's 2‖∇²f‖_F²."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 16), nn.Softplus(beta=1.0), nn.Linear(16, 3)).to(DT)
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
        net[2].bias.add_(10.0)  # |f| ≈ 10: the rounding error grows with |f|
    x0 = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(4))
    trace, frob_sq, _ = dense_trace_and_grad(net, x0, 1)
    net32 = net.float()
    n = 20_000
    with torch.no_grad():
        est = taylor_trace(lambda z: net32(z)[:, 1], x0.float().expand(n, 5), 0.01, 1)
    assert est.dtype == torch.float32
    # statistical tolerance (4 standard errors), plus 2 % for the O(σ²) bias
    assert abs(float(est.mean()) - trace) < 4 * float(est.std()) / n**0.5 + 0.02 * abs(trace)
    assert 0.8 * 2 * frob_sq < float(est.var()) < 1.25 * 2 * frob_sq


def test_taylor_trace_validation():
    f = lambda x: x.sum(1)  # noqa: E731
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="sigma"):
        taylor_trace(f, x, sigma=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        taylor_trace(f, x, n_samples=0)
    with pytest.raises(ValueError, match="one scalar per example"):
        taylor_trace(lambda z: z, x)


def test_taylor_trace_uses_given_base_and_keeps_graph():
    net = softplus_net()
    x = torch.randn(3, 5, dtype=DT)
    y = torch.tensor([0, 1, 2])
    fy = net(x).gather(1, y[:, None]).squeeze(1)

    def label_logit(z):
        return net(z).gather(1, y.repeat(z.shape[0] // 3)[:, None]).squeeze(1)

    torch.manual_seed(3)
    a = taylor_trace(label_logit, x, 0.1, 4, base=fy)
    torch.manual_seed(3)
    b = taylor_trace(label_logit, x, 0.1, 4)
    assert torch.allclose(a, b)
    a.sum().backward()
    assert net[0].weight.grad is not None


# ---------------------------------------------------------------------------------------------
# the wrappers' penalties against explicit double backward
# ---------------------------------------------------------------------------------------------
def per_example_logit_grads(net: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor):
    """∇ₓ f_y(x) per example with torch.func (independent of the wrappers' autograd code)."""

    def fy(xi, yi, p):
        out = functional_call(net, p, (xi.unsqueeze(0),))[0]
        return out.gather(0, yi.unsqueeze(0))[0]

    return vmap(grad(fy), in_dims=(0, 0, None))(x, y, params)


def test_gradient_norm_penalty_equals_explicit_double_backward():
    net = softplus_net()
    wrapper = GradientNormRegularizer(net, lam=0.7)
    x = torch.randn(6, 5, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    params = {k: v.detach() for k, v in net.named_parameters()}

    def penalty(p):
        g = per_example_logit_grads(net, p, x, y)
        return 0.5 * g.pow(2).sum(1).mean()

    expected_value = float(penalty(params))
    expected_grads = grad(penalty)(params)
    loss = wrapper.loss(x, y)
    ce = F.cross_entropy(net(x), y)
    assert float(loss.detach()) == pytest.approx(float(ce) + 0.7 * expected_value, rel=1e-12)
    assert wrapper.last_parts["grad_norm"] == pytest.approx(2 * expected_value, rel=1e-12)
    got = torch.autograd.grad(loss, list(net.parameters()))
    ce_grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    for (name, _), g, gc in zip(net.named_parameters(), got, ce_grads, strict=True):
        assert torch.allclose(g - gc, 0.7 * expected_grads[name], atol=1e-12), name


def test_score_matching_loss_equals_eq4():
    net = softplus_net()
    lam, sigma, mu, ns = 0.3, 0.05, 0.01, 3
    sm = ScoreMatching(net, lam=lam, sigma=sigma, n_samples=ns, mu=mu, estimator="one_sided")
    x = torch.rand(4, 5, dtype=DT)
    y = torch.tensor([2, 0, 1, 1])
    torch.manual_seed(11)
    loss = sm.loss(x, y)
    # reference: same noise (same RNG state), explicit terms
    params = {k: v.detach() for k, v in net.named_parameters()}
    gnorm = per_example_logit_grads(net, params, x, y).pow(2).sum(1)
    fy = net(x).gather(1, y[:, None]).squeeze(1)
    torch.manual_seed(11)
    v = sigma * torch.randn((ns, 4, 5), dtype=DT)
    noisy = net((x.unsqueeze(0) + v).reshape(-1, 5)).gather(1, y.repeat(ns)[:, None]).reshape(ns, 4)
    h = 2 / sigma**2 * (noisy - fy).mean(0)
    expected = F.cross_entropy(net(x), y) + lam * (h + 0.5 * gnorm + mu * h**2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-10)
    parts = sm.last_parts
    assert parts["trace"] == pytest.approx(float(h.mean()), rel=1e-10)
    assert parts["grad_norm"] == pytest.approx(float(gnorm.mean()), rel=1e-10)
    assert parts["trace_sq"] == pytest.approx(float((h**2).mean()), rel=1e-10)
    assert parts["total"] == pytest.approx(float(expected), rel=1e-10)
    # the gradient term is differentiable in the parameters (create_graph=True)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_anti_score_matching_clamps_the_trace():
    net = softplus_net()
    x = torch.rand(5, 5, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1])
    ce = float(F.cross_entropy(net(x), y))
    free = AntiScoreMatching(net, lam=0.5, sigma=0.05, clamp=1e12)
    torch.manual_seed(2)
    loss = free.loss(x, y)
    torch.manual_seed(2)
    h = taylor_trace(  # the default (antithetic) estimator evaluates 2 * 5 noisy inputs
        lambda z: net(z).gather(1, y.repeat(z.shape[0] // 5)[:, None]).squeeze(1), x, 0.05, 1
    )
    assert float(loss.detach()) == pytest.approx(ce - 0.5 * float(h.mean()), rel=1e-10)
    # a threshold below every trace: the penalty is the constant -lam*tau, its gradient is zero
    tau = float(h.min()) - 1.0
    clamped = AntiScoreMatching(net, lam=0.5, sigma=0.05, clamp=tau, estimator="antithetic")
    torch.manual_seed(2)
    loss = clamped.loss(x, y)
    assert float(loss.detach()) == pytest.approx(ce - 0.5 * tau, rel=1e-10)
    g = torch.autograd.grad(loss, list(net.parameters()))
    g_ce = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g, g_ce, strict=True))
    assert clamped.last_parts["trace_clamped"] == pytest.approx(tau)


def test_score_matching_defaults_follow_paper_and_code():
    net = softplus_net()
    sm = ScoreMatching(net)
    assert (sm.lam, sm.sigma, sm.n_samples, sm.mu, sm.estimator) == (1e-3, 0.01, 1, 1e-2, "antithetic")
    asm = AntiScoreMatching(net)
    assert (asm.lam, asm.sigma, asm.clamp, asm.n_samples, asm.estimator) == (
        1e-2,  # calibrated for the antithetic estimator (paper_defaults keeps the paper's 1e-4)
        1e-3,
        1000.0,
        1,
        "antithetic",
    )
    assert GradientNormRegularizer(net).lam == 1e-3
    # the authors' code, one argument away
    paper = ScoreMatching.paper_defaults(net)
    assert (paper.lam, paper.sigma, paper.n_samples, paper.mu, paper.estimator) == (
        1e-3,
        0.01,
        1,
        1e-3,
        "one_sided",
    )
    assert paper.model is net
    anti = AntiScoreMatching.paper_defaults(net, lam=2e-4)
    assert (anti.lam, anti.sigma, anti.clamp, anti.n_samples, anti.estimator) == (
        2e-4,
        1e-3,
        1e4,
        1,
        "one_sided",
    )
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    smooth = AntiScoreMatching.paper_defaults(relu, smooth=True).model
    assert smooth is not relu and [m.beta for m in smooth.modules() if isinstance(m, nn.Softplus)] == [10.0]
    assert "estimator='one_sided'" in repr(anti)
    with pytest.raises(ValueError):
        ScoreMatching(net, sigma=0)
    with pytest.raises(ValueError):
        GradientNormRegularizer(net, lam=-1)
    with pytest.raises(ValueError, match="estimator"):
        ScoreMatching(net, estimator="authors")
    with pytest.raises(ValueError, match="estimator"):
        taylor_trace(lambda z: z.sum(1), torch.zeros(2, 2), estimator="two_sided")
    with pytest.raises(ValueError, match="n_samples"):
        AntiScoreMatching(net, n_samples=0)


def test_wrappers_work_under_no_grad_and_with_float32():
    torch.manual_seed(0)
    net = relu_to_softplus(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)))
    x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 0])
    for w in (ScoreMatching(net), AntiScoreMatching(net), GradientNormRegularizer(net)):
        with torch.no_grad():
            loss = w.loss(x, y)
        assert loss.requires_grad and loss.dtype == torch.float32
        assert torch.equal(w(x), net(x))


# ---------------------------------------------------------------------------------------------
# relu_to_softplus
# ---------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def test_relu_to_softplus_copies_and_swaps_every_relu(untouched):
    net = Block()
    net.train()
    net.head[1].weight.grad = torch.ones_like(net.head[1].weight)
    with untouched(net):
        smooth = relu_to_softplus(net, beta=10.0)
    assert not any(isinstance(m, nn.ReLU) for m in smooth.modules())
    softplus = [m for m in smooth.modules() if isinstance(m, nn.Softplus)]
    assert len(softplus) == 2 and all(m.beta == 10.0 for m in softplus)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 2
    assert smooth.training
    for (n1, p1), (n2, p2) in zip(net.named_parameters(), smooth.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and p1 is not p2
    # same architecture: the smooth copy's weights load into the original class
    Block().load_state_dict(smooth.state_dict())
    # large beta: close to the ReLU network
    x = torch.randn(3, 1, 4, 4)
    close = relu_to_softplus(net, beta=1e4).eval()
    assert torch.allclose(close(x), net.eval()(x), atol=1e-3)


def test_relu_to_softplus_edge_cases():
    assert isinstance(relu_to_softplus(nn.ReLU(), beta=3.0), nn.Softplus)
    with pytest.warns(UserWarning, match="no nn.ReLU"):
        relu_to_softplus(nn.Linear(2, 2))
    with pytest.raises(ValueError):
        relu_to_softplus(nn.ReLU(), beta=0.0)
    with pytest.raises(TypeError):
        relu_to_softplus("net")  # type: ignore[arg-type]
