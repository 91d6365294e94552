"""Top-k attribution attack (Ghorbani et al.) and stability across retrainings (Gong et al. B.7)."""

import pytest
import torch
from captum.attr import Saliency
from sklearn.datasets import load_digits
from torch import nn

from captum_ext.attr.gradient_saliency import gradient_saliency
from captum_ext.metrics.robustness import attribution_attack, stability, topk_intersection
from captum_ext.metrics.similarity import topk_intersection as topk_pure
from captum_ext.training import MLPFactory, Trainer


@pytest.fixture(scope="module")
def digits_models():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = MLPFactory((1, 8, 8), hidden=(32,), num_classes=10)()
        nets.append(Trainer(epochs=6, lr=1e-2, batch_size=128)(net, (x[:1400], y[:1400]), seed))
    return nets, x[1400:], y[1400:]


def _saliency_maps(net, x, t):
    x = x.clone().requires_grad_(True)
    return gradient_saliency(net, x, t).reshape(x.shape[0], -1)


def test_topk_intersection_is_reexported():
    assert topk_intersection is topk_pure


def test_attack_keeps_prediction_and_stays_in_ball(digits_models, untouched):
    (net, _), x, _ = digits_models
    x = x[:24]
    eps = 0.5
    with untouched(net):
        res = attribution_attack(net, x, epsilon=eps, steps=15, clip=(0.0, 1.0))
    with torch.no_grad():
        assert torch.equal(net(res.perturbed).argmax(1), net(x).argmax(1))
    assert res.prediction_kept.all()
    norms = (res.perturbed - x).reshape(len(x), -1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-5)).all()
    assert torch.allclose(norms, res.delta_norm)
    assert res.perturbed.min() >= 0.0 and res.perturbed.max() <= 1.0
    # the reported score is the top-k overlap of the real model's maps before and after
    t = res.target
    again = topk_pure(_saliency_maps(net, x, t), _saliency_maps(net, res.perturbed, t))
    assert torch.allclose(again, res.topk_intersection, atol=1e-6)
    # the attack moves the attribution more than a random perturbation of the same size
    noise = torch.randn(x.shape)
    noise = eps * noise / noise.reshape(len(x), -1).norm(dim=1).view(-1, 1, 1, 1)
    rand = (x + noise).clamp(0, 1)
    rand_score = topk_pure(_saliency_maps(net, x, t), _saliency_maps(net, rand, t))
    assert res.topk_intersection.mean() < rand_score.mean() - 0.05
    assert res.topk_intersection.mean() < 0.95


def test_attack_needs_a_smooth_surrogate_for_relu_nets(digits_models):
    (net, _), x, _ = digits_models
    # on the ReLU net itself the saliency has zero input-gradient: nothing moves
    res = attribution_attack(net, x[:8], epsilon=0.5, steps=5, surrogate=net)
    assert torch.equal(res.perturbed, x[:8])
    assert torch.all(res.topk_intersection == 1.0)


def test_attack_batches_and_custom_attribution(untouched):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.Softplus(beta=3.0), nn.Linear(16, 3)).double().eval()
    x = torch.randn(6, 12, dtype=torch.float64)
    kw = {"epsilon": 0.3, "steps": 6}
    with untouched(net):
        full = attribution_attack(net, x, **kw)
        batched = attribution_attack(net, x, max_examples_per_batch=4, **kw)
    # float64: batching changes only the last bits (the default rtol 1e-5 is far above that)
    assert torch.allclose(full.perturbed, batched.perturbed)
    assert full.perturbed.dtype == torch.float64
    assert (full.delta_norm <= 0.3 + 1e-9).all()

    def grad_x_input(model, xx, t):
        out = model(xx).gather(1, t.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, xx, create_graph=True)
        return (g * xx).abs()

    custom = attribution_attack(net, x, attribution=grad_x_input, target=2, **kw)
    builtin = attribution_attack(net, x, attribution="gradient_x_input", target=2, **kw)
    assert torch.allclose(custom.perturbed, builtin.perturbed)
    assert torch.equal(custom.target, torch.full((6,), 2))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"steps": 0}, ValueError, "steps"),
        ({"attribution": "lrp"}, ValueError, "attribution"),
        ({"topk_fraction": 1.5}, ValueError, "topk_fraction"),
        ({"clip": (0.0, 0.5)}, ValueError, "outside the clip"),
        ({"target": 7}, ValueError, "target"),
        ({"surrogate": "net"}, TypeError, "surrogate"),
    ],
)
def test_attack_errors(kwargs, err, match):
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(2, 4)
    with pytest.raises(err, match=match):
        attribution_attack(net, x, **kwargs)


def test_attack_input_errors():
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(TypeError, match="single input"):
        attribution_attack(net, (torch.rand(2, 4),))
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="eval"):
        attribution_attack(bn, torch.rand(2, 4))


def test_stability_identical_models_score_one(digits_models, untouched):
    (net, _), x, y = digits_models
    with untouched(net):
        res = stability(
            net,
            x[:16],
            Saliency,
            other_forward_func=net,
            target=y[:16],
            ssim_kwargs={"window_size": 5, "sigma": 1.0},
        )
    assert set(res.scores) == {"ssim", "spearman", "topk"}
    for v in res.scores.values():
        assert torch.allclose(v, torch.ones(16), atol=1e-6)


def test_stability_across_seeds(digits_models, untouched):
    (a, b), x, y = digits_models
    with untouched(a), untouched(b):
        res = stability(
            a,
            x[:32],
            Saliency,
            other_forward_func=b,
            target=y[:32],
            metrics=("topk", "spearman"),
            return_attributions=True,
            max_examples_per_batch=10,
        )
    means = res.mean()
    # different initialisations: clearly not identical, clearly above chance (0.4 / 0)
    assert 0.45 < means["topk"] < 0.98
    assert 0.1 < means["spearman"] < 0.98
    attr_a, _ = res.attributions
    expected = Saliency(a).attribute(x[:32].clone().requires_grad_(True), target=y[:32])
    # float32 gradients computed in batches of 10 vs one batch of 32 go through different BLAS
    # kernels, whose summation order differs in the last bits (a default-tolerance allclose failed by
    # 2.4e-7 on another CPU): compare to float32 precision relative to the maps' scale.
    scale = float(expected.abs().max())
    torch.testing.assert_close(attr_a, expected, rtol=1e-5, atol=1e-5 * scale)


def test_stability_errors():
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(TypeError, match="other_forward_func"):
        stability(net, torch.rand(2, 4), Saliency, other_forward_func="b")
    with pytest.raises(ValueError, match="metrics"):
        stability(net, torch.rand(2, 4), Saliency, other_forward_func=net, metrics=("l2",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attack_and_stability_on_cuda():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval().cuda()
    x = torch.rand(4, 12, device="cuda")
    res = attribution_attack(net, x, epsilon=0.3, steps=4)
    assert res.perturbed.device.type == "cuda" and res.prediction_kept.all()
    assert (res.delta_norm <= 0.3 * (1 + 1e-5)).all()
    sim = stability(net, x, Saliency, other_forward_func=net)
    assert torch.allclose(sim.scores["topk"].cpu(), torch.ones(4))
