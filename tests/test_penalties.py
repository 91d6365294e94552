"""Input-gradient and weight penalties (Bötte & Pfeiffer) and the wrapper protocol of every regularizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from captum_ext.regularizers import (
    AntiScoreMatching,
    AttentionHarmonizedTraining,
    GradientNormRegularizer,
    InputGradientPenalty,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
    RegularizedModel,
    ScoreMatching,
    WeightPenalty,
    unwrap,
)
from captum_ext.regularizers.penalties import norm_penalty, weight_norm
from captum_ext.training import fit

DT = torch.float64


def small_net(seed: int = 0, dtype=DT) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Softplus(beta=5.0), nn.Linear(12, 3)).to(dtype)


def explicit_input_grads(net, params, x, y, of):
    """Per-example ∇ₓ of the CE loss or of the label logit, by torch.func (independent oracle)."""

    def score(xi, yi, p):
        out = functional_call(net, p, (xi.unsqueeze(0),))
        if of == "loss":
            return F.cross_entropy(out, yi.unsqueeze(0))
        return out[0].gather(0, yi.unsqueeze(0))[0]

    return vmap(grad(score), in_dims=(0, 0, None))(x, y, params)


def explicit_norm(g, p):
    if p == 1:
        return g.abs().sum(1)
    if p == 2:
        return g.pow(2).sum(1)
    return g.abs().amax(1)


@pytest.mark.parametrize("p", [1, 2, math.inf])
@pytest.mark.parametrize("of", ["loss", "logit"])
def test_input_gradient_penalty_equals_explicit_double_backward(p, of):
    net = small_net()
    lam = 0.37
    wrapper = InputGradientPenalty(net, p=p, lam=lam, of=of)
    x = torch.randn(7, 6, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    params = {k: v.detach() for k, v in net.named_parameters()}

    def penalty(prm):
        return explicit_norm(explicit_input_grads(net, prm, x, y, of), p).mean()

    value = float(penalty(params))
    loss = wrapper.loss(x, y)
    ce = F.cross_entropy(net(x), y)
    assert float(loss.detach()) == pytest.approx(float(ce) + lam * value, rel=1e-12)
    name = {1: "l1", 2: "l2", math.inf: "linf"}[p]
    assert wrapper.last_parts[f"input_grad_{name}"] == pytest.approx(value, rel=1e-12)
    # parameter gradient of the penalty = explicit double backward
    expected = grad(penalty)(params)
    got = torch.autograd.grad(loss - ce, list(net.parameters()))
    for (k, _), g in zip(net.named_parameters(), got, strict=True):
        assert torch.allclose(g, lam * expected[k], atol=1e-12), k


def test_unsquared_l2_and_string_p():
    g = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert torch.allclose(norm_penalty(g, 2, squared=False), torch.tensor([5.0, 1.0]))
    assert torch.allclose(norm_penalty(g, "l2"), torch.tensor([25.0, 1.0]))
    assert torch.allclose(norm_penalty(g, "linf"), torch.tensor([4.0, 1.0]))
    assert torch.allclose(norm_penalty(g, "l1"), torch.tensor([7.0, 1.0]))
    with pytest.raises(ValueError, match="p must be"):
        norm_penalty(g, 3)
    with pytest.raises(ValueError, match="of must be"):
        InputGradientPenalty(small_net(), of="probs")


def hand_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        net[0].bias.copy_(torch.tensor([10.0, -20.0]))
        net[2].weight.copy_(torch.tensor([[-4.0, 0.25]]))
        net[2].bias.copy_(torch.tensor([7.0]))
    return net


@pytest.mark.parametrize(
    "p,squared,include_bias,expected",
    [
        (1, True, False, 1 + 2 + 3 + 0.5 + 4 + 0.25),
        (2, True, False, 1 + 4 + 9 + 0.25 + 16 + 0.0625),
        (2, False, False, math.sqrt(1 + 4 + 9 + 0.25 + 16 + 0.0625)),
        (math.inf, True, False, 4.0),
        (1, True, True, 1 + 2 + 3 + 0.5 + 4 + 0.25 + 10 + 20 + 7),
        (math.inf, True, True, 20.0),
    ],
)
def test_weight_penalty_equals_hand_computed_norms(p, squared, include_bias, expected):
    net = hand_net()
    assert float(weight_norm(net, p, squared, include_bias)) == pytest.approx(expected)
    wrapper = WeightPenalty(net, p=p, lam=0.1, squared=squared, include_bias=include_bias)
    x, y = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    loss = wrapper.loss(x, y)
    ce = F.cross_entropy(net(x), y)
    assert float(loss.detach()) == pytest.approx(float(ce) + 0.1 * expected, rel=1e-6)
    name = {1: "weight_l1", 2: "weight_l2", math.inf: "weight_linf"}[p]
    assert wrapper.last_parts[name] == pytest.approx(expected, rel=1e-6)


def test_weight_penalty_gradient():
    net = hand_net()
    loss = WeightPenalty(net, p=1, lam=1.0).loss(torch.zeros(1, 2), torch.zeros(1).long())
    loss.backward()
    # d/dw |w| = sign(w) on top of the (zero-input) cross-entropy gradient of a 1-class model
    assert torch.allclose(net[0].weight.grad, torch.sign(net[0].weight.detach()))


def test_penalties_combine_by_nesting():
    net = small_net()
    x = torch.randn(5, 6, dtype=DT)
    y = torch.tensor([0, 1, 2, 1, 0])
    combo = WeightPenalty(InputGradientPenalty(net, p=1, lam=0.2), p=2, lam=0.01)
    total = combo.loss(x, y)
    parts = combo.last_parts
    assert set(parts) == {"ce", "input_grad_l1", "weight_l2", "total"}
    expected = parts["ce"] + 0.2 * parts["input_grad_l1"] + 0.01 * parts["weight_l2"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-12)
    assert combo.model is net and unwrap(combo) is net
    assert isinstance(combo.inner, InputGradientPenalty)
    # Bötte & Pfeiffer's "same loss on weights and gradients": a repeated part name is kept
    twice = InputGradientPenalty(InputGradientPenalty(net, p=2, lam=0.1), p=2, lam=0.1)
    twice.loss(x, y)
    assert {"input_grad_l2", "input_grad_l2_2"} <= set(twice.last_parts)
    # and score matching on top of a weight penalty
    sm = ScoreMatching(WeightPenalty(net, p=1, lam=1e-3), lam=1e-3)
    sm.loss(x, y)
    assert {"ce", "weight_l1", "trace", "grad_norm"} <= set(sm.last_parts)


def test_wrapper_input_validation():
    w = InputGradientPenalty(small_net())
    with pytest.raises(ValueError, match="labels must have shape"):
        w.loss(torch.zeros(3, 6, dtype=DT), torch.zeros(2).long())
    with pytest.raises(TypeError, match="integer"):
        w.loss(torch.zeros(3, 6, dtype=DT), torch.zeros(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        w.loss([[0.0] * 6], torch.zeros(1).long())
    with pytest.raises(TypeError):
        WeightPenalty("model")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the protocol, for every wrapper: logits unchanged, .model, training lowers the loss, reload
# ---------------------------------------------------------------------------------------------
WRAPPERS = {
    "score_matching": lambda m: ScoreMatching(m, lam=1e-3, sigma=0.01),
    "anti_score_matching": lambda m: AntiScoreMatching(m, lam=1e-4, sigma=1e-3),
    "gradient_norm": lambda m: GradientNormRegularizer(m, lam=1e-2),
    "grad_l1": lambda m: InputGradientPenalty(m, p=1, lam=0.05),
    "grad_l2": lambda m: InputGradientPenalty(m, p=2, lam=0.05),
    "grad_linf": lambda m: InputGradientPenalty(m, p="inf", lam=0.05),
    "weight_l1": lambda m: WeightPenalty(m, p=1, lam=1e-3),
    "weight_l2+grad_l2": lambda m: WeightPenalty(InputGradientPenalty(m, p=2, lam=0.05), p=2),
    "pgd_l2": lambda m: PGDAdversarialTraining(m, norm=2, eps=0.2, steps=3, clamp=(0, 1)),
    "pgd_linf": lambda m: PGDAdversarialTraining(m, norm="inf", eps=0.05, steps=3, clamp=(0, 1)),
    "nrat_l1": lambda m: NormRegularizedAdversarialTraining(m, norm="l1", eps=0.05),
    "nrat_group_iter": lambda m: NormRegularizedAdversarialTraining(
        m, norm="group", eps=0.1, group_size=2, iterative=True, steps=3, step_size=0.05
    ),
    "nrat_elastic_iter": lambda m: NormRegularizedAdversarialTraining(
        m, norm="elastic", eps=0.02, eps2=0.01, iterative=True, steps=3, step_size=0.05
    ),
    "attention": lambda m: AttentionHarmonizedTraining(
        m, eps=0.1, attention=torch.linspace(0, 1, 8).view(1, 8)
    ),
}


def blobs(n: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.rand(3, 8, generator=gen)
    x = (centers[y] + 0.15 * torch.randn(n, 8, generator=gen)).clamp(0, 1)
    return x, y


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Softplus(beta=10.0), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_training_lowers_loss_and_plain_model_reloads(name, tmp_path):
    torch.manual_seed(0)
    net = Plain()
    wrapper = WRAPPERS[name](net)
    assert isinstance(wrapper, RegularizedModel)
    x, y = blobs()
    assert torch.equal(wrapper(x), net(x))  # logits unchanged
    assert wrapper.model is net

    def eval_loss():
        torch.manual_seed(123)  # same noise / random start before and after
        return float(wrapper.loss(x, y).detach())

    before = eval_loss()
    fit(wrapper, (x, y), epochs=8, lr=0.03, batch_size=32, seed=0, progress=False)
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
    assert not wrapper.training and not net.training
    assert set(wrapper.last_parts) >= {"total"}

    path = tmp_path / "plain.pt"
    torch.save(wrapper.model.state_dict(), path)
    fresh = Plain()
    fresh.load_state_dict(torch.load(path))  # strict: same keys as the unwrapped architecture
    assert torch.equal(fresh(x), net(x))
