"""Class-conditional samples by activity maximisation and the GAN-test score."""

import matplotlib

matplotlib.use("Agg")

import json
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from captum_ext.metrics.samples import ClassSamples, class_conditional_samples, gan_test
from captum_ext.training import MLPFactory, Trainer


@pytest.fixture(scope="module")
def digits_nets():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    nets = []
    for seed in (0, 1):  # the second is the independent GAN-test classifier
        torch.manual_seed(seed)
        net = MLPFactory((1, 8, 8), hidden=(32,), num_classes=10)()
        nets.append(Trainer(epochs=6, lr=1e-2, batch_size=128)(net, (x[:1400], y[:1400]), seed))
    return nets, x[1400:], y[1400:]


def test_linear_model_closed_form_with_weight_decay(untouched):
    # ascent on w_y.x + b - wd/2 ||x - 0.5||^2 converges to x* = 0.5 + w_y / wd
    torch.manual_seed(0)
    net = nn.Linear(6, 3).double().eval()
    with untouched(net):
        s = class_conditional_samples(
            net, (6,), target=[0, 2, 1], steps=80, lr=0.5, weight_decay=1.0, clip=None
        )
    want = 0.5 + net.weight.detach()[[0, 2, 1]] / 1.0
    assert torch.allclose(s.samples, want, atol=1e-12)
    assert s.samples.dtype == torch.float64
    assert torch.equal(s.labels, torch.tensor([0, 2, 1]))


def test_linear_model_clipped_ascent_saturates():
    # no decay, box [0, 1]: the maximiser of w_y.x is 1 where w_y > 0 and 0 where w_y < 0
    torch.manual_seed(0)
    net = nn.Linear(8, 2).eval()
    s = class_conditional_samples(net, (8,), target=torch.tensor([1, 0]), steps=5, lr=100.0)
    want = (net.weight.detach() > 0).float()[[1, 0]]
    assert torch.equal(s.samples, want)
    assert (s.final_logits >= s.initial_logits).all()


def test_samples_raise_the_class_logit_on_digits(digits_nets, untouched):
    (net, _), _, _ = digits_nets
    targets = torch.arange(10).repeat(2)
    with untouched(net):
        s = class_conditional_samples(net, (1, 8, 8), target=targets, steps=30, lr=0.05, weight_decay=1e-3)
    assert s.samples.shape == (20, 1, 8, 8)
    assert s.samples.min() >= 0.0 and s.samples.max() <= 1.0
    assert (s.final_logits > s.initial_logits + 1.0).all()
    with torch.no_grad():
        assert torch.allclose(net(s.samples).gather(1, targets.view(-1, 1))[:, 0], s.final_logits)
        assert (net(s.samples).argmax(1) == targets).all()  # the generator's own classes
    # seeded, and batching does not change anything
    again = class_conditional_samples(
        net, (1, 8, 8), target=targets, steps=30, lr=0.05, weight_decay=1e-3, max_examples_per_batch=7
    )
    # float32: batches of 7 vs 20 use different BLAS kernels (last-bit differences per step, 30 steps)
    assert torch.allclose(s.samples, again.samples, atol=1e-5)
    other = class_conditional_samples(net, (1, 8, 8), target=targets, steps=30, lr=0.05, seed=1)
    assert not torch.allclose(s.samples, other.samples)
    ax = s.plot(ncols=10)
    assert len(ax.images) == 1 and ax.images[0].get_array().shape[:2] == (2 * 9, 10 * 9)


def test_gan_test_real_data_and_samples(digits_nets, untouched):
    (gen, judge), x_test, y_test = digits_nets
    with untouched(judge):
        # a correct classifier recognises real held-out digits
        assert gan_test(judge, x_test, target=y_test).accuracy > 0.85
        s = class_conditional_samples(gen, (1, 8, 8), target=torch.arange(10).repeat(3), steps=30, lr=0.05)
        score = gan_test(judge, s).accuracy
    assert 0.0 <= score <= 1.0
    # float32 logits in batches of 4 vs 30 differ in the last bits: allow one arg-max flip on a near-tie
    batched = gan_test(judge, s.samples, target=s.labels, max_examples_per_batch=4).accuracy
    assert abs(batched - score) <= 1 / 30 + 1e-12


def test_gan_test_exact_on_constructed_classifier():
    judge = nn.Linear(3, 3, bias=False).eval()
    with torch.no_grad():
        judge.weight.copy_(torch.eye(3))  # predicts the arg-max coordinate
    samples = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    labels = [0, 1, 0, 2]
    res = gan_test(judge, samples, target=labels)
    assert res.accuracy == 0.5 and res.correct.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.allclose(res.per_class, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    per2 = gan_test(judge, samples[:2], target=[0, 0]).per_class
    assert per2[0] == 0.5 and math.isnan(per2[1]) and math.isnan(per2[2])
    wrapped = ClassSamples(samples, torch.tensor(labels), torch.zeros(4), torch.zeros(4))
    assert gan_test(judge, wrapped).accuracy == 0.5
    json.dumps(res.to_dict())


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"steps": -1}, ValueError, "steps"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"clip": (1.0, 0.0)}, ValueError, "clip"),
        ({"init": "zeros"}, ValueError, "init"),
        ({"init": torch.zeros(3, 4)}, ValueError, "init tensor"),
        ({"target": 5}, ValueError, "target"),
        ({"target": []}, ValueError, "empty"),
        ({"target": "cat"}, TypeError, "target"),
        ({"input_shape": (0,)}, ValueError, "input_shape"),
    ],
)
def test_sample_errors(kwargs, err, match):
    net = nn.Linear(4, 3).eval()
    args = {"target": [0, 1], "input_shape": (4,)}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        class_conditional_samples(net, args.pop("input_shape"), **args)


def test_gan_test_and_eval_mode_errors():
    net = nn.Linear(4, 3).eval()
    with pytest.raises(ValueError, match="target is required"):
        gan_test(net, torch.rand(2, 4))
    with pytest.raises(ValueError, match="entries"):
        gan_test(net, torch.rand(2, 4), target=[0, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        gan_test(net, torch.rand(2, 4), target=[0, 3])
    with pytest.raises(TypeError, match="inputs"):
        gan_test(net, [1, 2], target=[0, 1])
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="eval"):
        gan_test(bn, torch.rand(2, 4), target=[0, 1])
    with pytest.raises(ValueError, match="eval"):
        class_conditional_samples(bn, (4,), target=[0])
