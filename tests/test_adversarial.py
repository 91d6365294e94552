"""PGD, norm-regularized adversarial training and attention harmonisation (Madry; Gong et al. B.3-B.8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ext.regularizers import (
    AttentionHarmonizedTraining,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
    attention_perturbation,
    closed_form_perturbation,
    elastic_penalty,
    norm_regularized_perturbation,
    pgd_perturbation,
)
from captum_ext.regularizers.attacks import group_ids, group_norms, project_groups, project_l2

DT = torch.float64


def linear_model(d: int, c: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, c).to(DT)


def analytic_loss_grad(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ CE(Wx + b, y) = Wᵀ(softmax(Wx + b) − e_y) for a linear model (closed form)."""
    with torch.no_grad():
        p = (x @ lin.weight.T + lin.bias).softmax(1)
        return (p - F.one_hot(y, p.shape[1]).to(p)) @ lin.weight


class ImageLinear(nn.Module):
    def __init__(self, shape, c, seed):
        super().__init__()
        self.lin = linear_model(math.prod(shape), c, seed)

    def forward(self, x):
        return self.lin(x.flatten(1))


# ---------------------------------------------------------------------------------------------
# one-step closed forms (B.3)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=15)
@given(seed=st.integers(0, 1000), eps=st.floats(0.01, 2.0), eps2=st.floats(0.01, 1.0))
def test_one_step_l1_and_elastic_equal_closed_forms(seed, eps, eps2):
    lin = linear_model(7, 4, seed)
    x = torch.randn(5, 7, dtype=DT, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([0, 1, 2, 3, 0])
    g = analytic_loss_grad(lin, x, y)
    d1 = norm_regularized_perturbation(lin, x, y, norm="l1", eps=eps)
    assert torch.allclose(d1, eps * torch.sign(g), atol=1e-12)
    de = norm_regularized_perturbation(lin, x, y, norm="elastic", eps=eps, eps2=eps2)
    assert torch.allclose(de, eps * torch.sign(g) + 2 * eps2 * g, atol=1e-12)


def test_one_step_group_equals_closed_form_on_images():
    shape = (2, 5, 5)  # 5 is not a multiple of the group size: border patches are smaller
    net = ImageLinear(shape, 3, seed=0)
    x = torch.randn(4, *shape, dtype=DT)
    y = torch.tensor([0, 1, 2, 0])
    g = analytic_loss_grad(net.lin, x.flatten(1), y).view_as(x)
    delta = norm_regularized_perturbation(net, x, y, norm="group", eps=0.7, group_size=2)
    expected = torch.empty_like(g)
    for i0 in range(0, 5, 2):  # explicit loop over 2×2 patches, all channels in one group
        for j0 in range(0, 5, 2):
            block = g[:, :, i0 : i0 + 2, j0 : j0 + 2]
            norm = block.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            expected[:, :, i0 : i0 + 2, j0 : j0 + 2] = 0.7 * block / norm
    assert torch.allclose(delta, expected, atol=1e-12)


def test_group_ids_layout():
    ids = group_ids((3, 5, 4), 2)
    assert ids.shape == (3, 5, 4)
    assert torch.equal(ids[0], ids[2])  # channels share a group
    assert int(ids.max()) + 1 == 3 * 2
    assert torch.equal(group_ids((7,), 3), torch.tensor([0, 0, 0, 1, 1, 1, 2]))
    g = torch.tensor([[3.0, 4.0, 1.0, 0.0]])
    assert torch.allclose(group_norms(g, 2), torch.tensor([[5.0, 5.0, 1.0, 1.0]]))
    with pytest.raises(ValueError):
        group_ids((4,), 0)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(0.05, 2.0),
    eps2=st.floats(0.05, 1.0),
    size=st.integers(1, 9),
    gs=st.integers(1, 4),
)
def test_closed_forms_maximise_the_linearised_problems(seed, eps, eps2, size, gs):
    """B.3's closed forms are the maximisers of gᵀδ − R(δ) (A.2, A.3): no feasible δ does better."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(1, size, generator=gen, dtype=DT)
    others = torch.randn(64, size, generator=gen, dtype=DT) * 2
    # l1 (FGSM): max over the ℓ∞ ball
    best = float((g * closed_form_perturbation(g, "l1", eps)).sum())
    cand = (g * others.clamp(-eps, eps)).sum(1)
    assert float(cand.max()) <= best + 1e-12
    # group: max over {‖δ_S‖ ≤ ε for all S}
    best = float((g * closed_form_perturbation(g, "group", eps, group_size=gs)).sum())
    cand = (g * project_groups(others, eps, gs)).sum(1)
    assert float(cand.max()) <= best + 1e-12
    # elastic: max of gᵀδ − Σ PQ(δ)
    de = closed_form_perturbation(g, "elastic", eps, eps2)
    best = float((g * de).sum() - elastic_penalty(de, eps, eps2).sum())
    assert best == pytest.approx(eps * float(g.abs().sum()) + eps2 * float(g.pow(2).sum()))
    cand = (g * others).sum(1) - elastic_penalty(others, eps, eps2)
    assert float(cand.max()) <= best + 1e-12


# ---------------------------------------------------------------------------------------------
# iterative perturbations stay in their balls
# ---------------------------------------------------------------------------------------------
def softplus_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Softplus(beta=3.0), nn.Linear(10, 3)).to(DT)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 1000),
    norm=st.sampled_from([2, math.inf]),
    eps=st.floats(0.01, 3.0),
    steps=st.integers(0, 5),
    step_size=st.one_of(st.none(), st.floats(0.01, 2.0)),
    random_start=st.booleans(),
    use_clamp=st.booleans(),
)
def test_pgd_stays_in_its_ball_and_input_range(seed, norm, eps, steps, step_size, random_start, use_clamp):
    net = softplus_mlp(seed % 3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (5,), generator=gen)
    clamp = (0.0, 1.0) if use_clamp else None
    delta = pgd_perturbation(
        net,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        clamp=clamp,
        generator=gen,
    )
    size = delta.abs().amax(1) if norm == math.inf else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-9)).all())
    if use_clamp:
        assert float((x + delta).min()) >= 0.0 and float((x + delta).max()) <= 1.0


def test_pgd_increases_the_loss():
    net = softplus_mlp(0)
    x = torch.rand(64, 6, dtype=DT)
    y = net(x).argmax(1).detach()
    clean = F.cross_entropy(net(x), y, reduction="none")
    for norm, eps in [(2, 0.5), ("linf", 0.2)]:
        delta = pgd_perturbation(net, x, y, norm=norm, eps=eps, steps=10, random_start=False)
        adv = F.cross_entropy(net(x + delta), y, reduction="none")
        assert bool((adv >= clean - 1e-12).all())
        assert float(adv.mean()) > float(clean.mean()) + 0.01
        # and beats a random direction of the same size
        rand = torch.randn_like(x)
        rand = project_l2(rand * 1e3, eps) if norm == 2 else eps * rand.sign()
        assert float(adv.mean()) > float(F.cross_entropy(net(x + rand), y))


@settings(max_examples=15)
@given(
    seed=st.integers(0, 1000),
    eps=st.floats(0.02, 1.0),
    steps=st.integers(1, 7),
    step_size=st.floats(0.01, 0.5),
    gs=st.integers(1, 3),
    use_clamp=st.booleans(),
)
def test_iterative_perturbations_stay_in_their_balls(seed, eps, steps, step_size, gs, use_clamp):
    net = softplus_mlp(seed % 3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (4,), generator=gen)
    clamp = (0.0, 1.0) if use_clamp else None
    kw = dict(eps=eps, iterative=True, steps=steps, step_size=step_size, clamp=clamp)
    d1 = norm_regularized_perturbation(net, x, y, norm="l1", **kw)
    assert float(d1.abs().max()) <= eps * (1 + 1e-9)
    dg = norm_regularized_perturbation(net, x, y, norm="group", group_size=gs, **kw)
    assert float(group_norms(dg, gs).max()) <= eps * (1 + 1e-9)
    if use_clamp:
        for d in (d1, dg):
            assert float((x + d).min()) >= 0.0 and float((x + d).max()) <= 1.0


def test_iterative_elastic_never_worse_than_one_step():
    net = softplus_mlp(1)
    x = torch.rand(16, 6, dtype=DT)
    y = torch.arange(16) % 3
    eps, eps2 = 0.05, 5.0  # large ε₂: perturbations of the data's scale, where curvature matters

    def objective(d):
        with torch.no_grad():
            ce = F.cross_entropy(net(x + d), y, reduction="none")
        return ce - elastic_penalty(d, eps, eps2)

    one = norm_regularized_perturbation(net, x, y, norm="elastic", eps=eps, eps2=eps2)
    for step in (0.3, 0.05, 0.01):  # B.4's step and smaller ones
        it = norm_regularized_perturbation(
            net, x, y, norm="elastic", eps=eps, eps2=eps2, iterative=True, steps=7, step_size=step
        )
        assert bool((objective(it) >= objective(one) - 1e-12).all())
        assert float(objective(it).mean()) > float(objective(one).mean()) + 1e-3


# ---------------------------------------------------------------------------------------------
# attention harmonisation (B.8)
# ---------------------------------------------------------------------------------------------
def test_attention_perturbation_formula():
    g = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]], dtype=DT)  # ‖g‖ = 5
    a = torch.tensor([[[0.0, 1.0], [0.5, 2.0]]], dtype=DT)  # max 2
    d = attention_perturbation(g, a, eps=0.1)
    coeff = 0.1 * 2.0 - 2 * 0.1 * a
    assert torch.allclose(d, coeff * g / 5.0)
    with pytest.raises(ValueError, match="broadcast"):
        attention_perturbation(g, torch.ones(3, 3), 0.1)


def test_attention_wrapper_uses_given_maps():
    shape = (1, 4, 4)
    net = ImageLinear(shape, 3, seed=0)
    x = torch.rand(3, *shape, dtype=DT)
    y = torch.tensor([0, 1, 2])
    maps = torch.rand(3, 1, 4, 4, dtype=DT)
    wrapper = AttentionHarmonizedTraining(net, eps=0.3, attention=lambda xb, yb: maps)
    g = analytic_loss_grad(net.lin, x.flatten(1), y).view_as(x)
    expected = attention_perturbation(g, maps, 0.3)
    assert torch.allclose(wrapper.perturb(x, y), expected, atol=1e-12)
    loss = wrapper.loss(x, y)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(net(x + expected), y)))
    other = torch.ones(1, 1, 4, 4, dtype=DT)
    wrapper.loss(x, y, attention=other)  # per-batch override: constant map -> delta = -eps g/|g|
    d_const = attention_perturbation(g, other, 0.3)
    assert torch.allclose(d_const, -0.3 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="no attention maps"):
        AttentionHarmonizedTraining(net).loss(x, y)


# ---------------------------------------------------------------------------------------------
# attacks leave the model alone
# ---------------------------------------------------------------------------------------------
def bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Softplus(), nn.Dropout(0.3), nn.Linear(8, 3))


ATTACKS = {
    "pgd_l2": lambda m, x, y: pgd_perturbation(m, x, y, norm=2, eps=0.5, steps=3),
    "pgd_linf": lambda m, x, y: pgd_perturbation(m, x, y, norm="inf", eps=0.1, steps=3, clamp=(0, 1)),
    "l1_iter": lambda m, x, y: norm_regularized_perturbation(m, x, y, norm="l1", iterative=True, steps=2),
    "group": lambda m, x, y: norm_regularized_perturbation(m, x, y, norm="group", group_size=2),
    "elastic_iter": lambda m, x, y: norm_regularized_perturbation(
        m, x, y, norm="elastic", iterative=True, steps=2
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_attacks_leave_model_untouched(name, mode, untouched):
    net = bn_dropout_net()
    net.train(mode != "eval")
    if mode == "mixed":
        net[1].eval()
    net[0].weight.grad = torch.full_like(net[0].weight, 0.5)  # pre-existing grads stay as they are
    x, y = torch.rand(8, 6), torch.arange(8) % 3
    with untouched(net):
        delta = ATTACKS[name](net, x, y)
        with torch.no_grad():  # callers may be under no_grad
            ATTACKS[name](net, x, y)
    assert delta.shape == x.shape and not delta.requires_grad


def test_wrapper_loss_touches_no_grad_before_backward():
    net = bn_dropout_net()
    net.train()
    w = PGDAdversarialTraining(net, eps=0.3, steps=2)
    x, y = torch.rand(8, 6), torch.arange(8) % 3
    loss = w.loss(x, y)
    assert all(p.grad is None for p in net.parameters())
    assert net.training and net[1].training  # mode unchanged by the inner attack
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert set(w.last_parts) == {"adv_ce", "delta_l2", "delta_linf", "total"}
    assert w.last_parts["delta_l2"] <= 0.3 + 1e-6


def test_adversarial_validation():
    net = softplus_mlp()
    x, y = torch.rand(2, 6, dtype=DT), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm must be 2 or inf"):
        pgd_perturbation(net, x, y, norm=1)
    with pytest.raises(ValueError, match="norm must be 2 or inf"):
        PGDAdversarialTraining(net, norm="l1")
    with pytest.raises(ValueError, match="norm must be"):
        NormRegularizedAdversarialTraining(net, norm="l3")
    with pytest.raises(ValueError, match="eps2"):
        NormRegularizedAdversarialTraining(net, norm="elastic", eps2=0.0)
    with pytest.raises(ValueError, match="clamp"):
        pgd_perturbation(net, x, y, clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="target"):
        pgd_perturbation(net, x, None)
    with pytest.raises(TypeError, match="one batch-first input tensor"):
        pgd_perturbation(net, (x,), y)
    with pytest.raises(ValueError, match="target has"):
        pgd_perturbation(net, x, [0, 1, 2])


def test_targets_in_every_captum_form_agree():
    net = softplus_mlp()
    x = torch.rand(3, 6, dtype=DT)
    a = norm_regularized_perturbation(net, x, 1)
    b = norm_regularized_perturbation(net, x, [1, 1, 1])
    c = norm_regularized_perturbation(net, x, torch.tensor(1))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_float32_and_defaults():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Softplus(), nn.Linear(4, 2))
    x, y = torch.rand(3, 6), torch.tensor([0, 1, 0])
    d = pgd_perturbation(net, x, y)
    assert d.dtype == torch.float32 and float(d.norm(dim=1).max()) <= 2.0 + 1e-5
    w = PGDAdversarialTraining(net)
    assert (w.norm, w.eps, w.steps, w.random_start) == (2, 2.0, 7, True)
    nr = NormRegularizedAdversarialTraining(net, iterative=True)
    assert (nr.steps, nr.step_size) == (7, 0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_on_cuda():
    net = softplus_mlp().cuda()
    x = torch.rand(4, 6, dtype=DT, device="cuda")
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    d = pgd_perturbation(net, x, y, norm=2, eps=0.5, steps=2, clamp=(0, 1))
    assert d.device.type == "cuda" and float(d.norm(dim=1).max()) <= 0.5 + 1e-9
    dg = norm_regularized_perturbation(net, x, y, norm="group", group_size=2, iterative=True)
    assert dg.device.type == "cuda"
