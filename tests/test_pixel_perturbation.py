import copy
import json

import pytest
import torch
from captum.attr import Saliency
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from captum_ext.datasets import BlockMNIST, SignedBasisToy
from captum_ext.metrics import PixelPerturbationResult, count_for_fraction, pixel_perturbation
from captum_ext.training import MLPFactory, fit


class Recorder(nn.Module):
    """A fixed linear classifier that records every batch it is given."""

    def __init__(self, d, classes=2):
        super().__init__()
        self.lin = nn.Linear(d, classes)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


# ------------------------------------------------------------------------------ exact pixel counts


@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    frac=st.floats(0.01, 1.0, allow_nan=False),
    order=st.sampled_from(["least", "most"]),
    seed=st.integers(0, 1000),
)
def test_exactly_the_requested_pixels_are_removed(n, c, h, w, frac, order, seed):
    assume(count_for_fraction(frac, h * w) >= 1)  # fractions removing nothing are refused (tested below)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g) + 1.0  # never equal to the fill value
    attr = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).float()
    model = Recorder(c * h * w)
    res = pixel_perturbation(model, x, attr, target=0, fractions=(frac,), order=order, baselines=-1.0)
    k = count_for_fraction(frac, h * w)
    assert res.counts == (k,) and res.units == h * w
    perturbed = model.seen[-1]  # [clean, perturbed]
    removed = perturbed == -1.0
    assert bool((removed.all(dim=1) == removed.any(dim=1)).all())  # whole pixels
    assert bool((removed[:, 0].sum(dim=(1, 2)) == k).all())
    assert torch.equal(perturbed[~removed], x[~removed])
    # the removed pixels are the k least (or most) relevant by sum of |attribution| over channels
    rel = attr.abs().sum(dim=1).flatten(1)
    order_idx = rel.argsort(dim=1, descending=(order == "most"))[:, :k]
    expected = torch.zeros(n, h * w, dtype=torch.bool).scatter_(1, order_idx, True)
    assert torch.equal(removed[:, 0].flatten(1), expected)


def test_counts_round_half_up():
    x = torch.rand(2, 1, 2, 5) + 1.0
    model = Recorder(10)
    res = pixel_perturbation(
        model, x, torch.rand_like(x), target=0, fractions=(0.05, 0.15, 0.35, 1.0), baselines=-1.0
    )
    assert res.counts == (1, 2, 4, 10)  # 0.5 -> 1, 1.5 -> 2, 3.5 -> 4
    removed = [int((s[0] == -1.0).sum()) for s in model.seen[1:]]
    assert removed == [1, 2, 4, 10]


def test_mean_fill_and_channel_mean():
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    attr = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 2, 2, 2)
    model = Recorder(8)
    pixel_perturbation(model, x, attr, target=0, fractions=(0.5,), baselines="mean")
    out = model.seen[-1]
    # the two least relevant pixels (0, 0) and (0, 1) get the image mean 3.5 in every channel
    assert out[0, :, 0].tolist() == [[3.5, 3.5], [3.5, 3.5]]
    assert torch.equal(out[0, :, 1], x[0, :, 1])
    pixel_perturbation(model, x, attr, target=0, fractions=(0.5,), baselines="channel_mean")
    assert model.seen[-1][0, :, 0].tolist() == [[1.5, 1.5], [5.5, 5.5]]


def test_channel_aggregation_options():
    # pixel A: channel attributions (1, 0); pixel B: (0, -3)
    x = torch.ones(1, 2, 1, 2) + 1.0
    attr = torch.tensor([[[[1.0, 0.0]], [[0.0, -3.0]]]])
    model = Recorder(4)
    pixel_perturbation(model, x, attr, target=0, fractions=(0.5,), baselines=-1.0)  # abs_sum: A=1 < B=3
    assert model.seen[-1][0, :, 0, 0].eq(-1.0).all() and model.seen[-1][0, :, 0, 1].eq(2.0).all()
    pixel_perturbation(model, x, attr, target=0, fractions=(0.5,), baselines=-1.0, aggregate="sum")
    assert model.seen[-1][0, :, 0, 1].eq(-1.0).all() and model.seen[-1][0, :, 0, 0].eq(2.0).all()
    pixel_perturbation(model, x, attr, target=0, fractions=(0.25,), baselines=-1.0, aggregate="abs")
    assert int(model.seen[-1].eq(-1.0).sum()) == 1  # one coordinate, not a whole pixel


# ------------------------------------------------------------------------------ exact accuracies


def test_exact_accuracy_on_the_toy_set_with_a_known_classifier():
    """Logits (-sum x, sum x) classify x = y e_j perfectly while the signal coordinate survives."""
    x, y, mask = SignedBasisToy(200, d=10, seed=0).tensors()
    model = nn.Linear(10, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.stack([-torch.ones(10), torch.ones(10)]))
    res = pixel_perturbation(
        model, x, mask.float(), target=y, fractions=(0.5, 0.9, 1.0), baselines=0.0, aggregate="abs"
    )
    assert res.baseline_accuracy == 1.0
    assert res.accuracy[:2].tolist() == [1.0, 1.0]  # the signal coordinate is never removed
    # everything removed: all logits 0, argmax picks class 0
    assert res.accuracy[2].item() == pytest.approx(float((y == 0).double().mean()))
    assert res.label_prob[2].item() == pytest.approx(0.5)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1).gather(1, y[:, None]).mean()
    assert res.baseline_label_prob == pytest.approx(float(p))
    # removing the MOST relevant coordinate first kills the signal at once
    worst = pixel_perturbation(
        model, x, mask.float(), target=y, fractions=(0.1,), order="most", baselines=0.0
    )
    assert worst.accuracy.item() == pytest.approx(float((y == 0).double().mean()))


@pytest.fixture(scope="module")
def block_model():
    train, test = BlockMNIST("train", seed=0), BlockMNIST("test", seed=0)
    torch.manual_seed(0)
    net = fit(
        MLPFactory((1, 56, 28), hidden=(32,))(),
        train,
        epochs=5,
        lr=3e-3,
        batch_size=32,
        progress=False,
    )
    return net, test.tensors()


def test_oracle_attribution_keeps_accuracy_where_random_loses_it(block_model, untouched):
    net, (x, y, mask) = block_model
    g = torch.Generator().manual_seed(0)
    oracle = mask.float() * x  # the digit's own pixels
    random = torch.rand(x.shape, generator=g)
    with untouched(net):
        good = pixel_perturbation(net, x, oracle, target=y, fractions=(0.5, 0.75))
        bad = pixel_perturbation(net, x, random, target=y, fractions=(0.5, 0.75))
    assert good.baseline_accuracy == bad.baseline_accuracy > 0.9
    assert bool((good.accuracy >= bad.accuracy).all()), (good.accuracy, bad.accuracy)
    # removing 75% of the pixels (the null block and the signal block's background) with the
    # image mean keeps most of the accuracy; removing a random 75% brings it to chance
    assert good.accuracy[-1] >= 0.7 and bad.accuracy[-1] <= 0.65, (good.accuracy, bad.accuracy)
    assert float(good.label_prob[-1]) > float(bad.label_prob[-1])


def test_cross_model_setting_and_callable_attributions(block_model, untouched):
    """Attributions from model A explain model B (Srinivas & Fleuret, Fig. 3b)."""
    net_b, (x, y, _) = block_model
    # float64 copies: attributions computed in batches of 16 and of 40 then agree to ~1e-16, so the
    # pixel ranking (and with it the accuracy) cannot flip on a float32 near-tie between BLAS kernels
    net_b = copy.deepcopy(net_b).double()
    x, y = x[:40].double(), y[:40]
    torch.manual_seed(1)
    net_a = MLPFactory((1, 56, 28), hidden=(8,))().double()
    sal_a = Saliency(net_a)
    pre = sal_a.attribute(x, target=y).detach()
    with untouched(net_a), untouched(net_b):
        res = pixel_perturbation(
            net_b, x, sal_a.attribute, target=y, fractions=(0.3, 0.6), max_examples_per_batch=16
        )
    ref = pixel_perturbation(net_b, x, pre, target=y, fractions=(0.3, 0.6))
    assert torch.equal(res.accuracy, ref.accuracy)
    torch.testing.assert_close(res.label_prob, ref.label_prob, rtol=0, atol=1e-12)


def test_tuple_inputs_are_ranked_jointly_and_additional_args():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, a, b, scale):
            self.seen.append((a.clone(), b.clone()))
            return scale * torch.stack([a.flatten(1).sum(1), b.flatten(1).sum(1)], dim=1)

    a, b = torch.full((3, 1, 2, 2), 2.0), torch.full((3, 1, 3), 2.0)
    attr_a = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2).expand(3, 1, 2, 2)
    attr_b = torch.tensor([10.0, 0.5, 20.0]).reshape(1, 1, 3).expand(3, 1, 3)
    model = TwoInputs()
    res = pixel_perturbation(
        model,
        (a, b),
        (attr_a, attr_b),
        target=[0, 1, 1],
        fractions=(3 / 7,),
        baselines=0.0,
        additional_forward_args=(1.0,),
    )
    assert res.units == 7 and res.counts == (3,)
    pa, pb = model.seen[-1]
    # relevances 1, 2, 3, 4 | 10, 0.5, 20: the three least are 0.5, 1, 2
    assert pa[0].flatten().tolist() == [0.0, 0.0, 2.0, 2.0]
    assert pb[0].flatten().tolist() == [2.0, 0.0, 2.0]


def test_float64_inputs():
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3)).double()
    res = pixel_perturbation(model, x, torch.rand_like(x), target=torch.tensor([0, 1, 2, 0, 1]))
    assert res.accuracy.dtype == torch.float64 and len(res.fractions) == 10


# ------------------------------------------------------------------------------------------- errors


def test_errors():
    x = torch.rand(4, 1, 3, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 2))
    attr = torch.rand_like(x)
    for bad in ((0.0,), (0.5, 1.2), ()):
        with pytest.raises(ValueError, match="fractions"):
            pixel_perturbation(model, x, attr, target=0, fractions=bad)
    with pytest.raises(ValueError, match="shaped like"):
        pixel_perturbation(model, x, attr[:, :, :2], target=0)
    with pytest.raises(ValueError, match="order"):
        pixel_perturbation(model, x, attr, target=0, order="random")
    with pytest.raises(ValueError, match="entries"):
        pixel_perturbation(model, x, attr, target=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        pixel_perturbation(model, x[:0], attr[:0], target=0)
    with pytest.raises(ValueError, match="aggregate"):
        pixel_perturbation(model, x, attr, target=0, aggregate="mean")
    with pytest.raises(ValueError, match="NaN"):
        pixel_perturbation(model, x, attr * float("nan"), target=0)
    train_mode = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(9, 2)).train()
    with pytest.raises(ValueError, match="eval"):
        pixel_perturbation(train_mode, x, attr, target=0, fractions=(0.5,))


def test_result_object_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    x = torch.rand(6, 1, 2, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    res = pixel_perturbation(model, x, torch.rand_like(x), target=1, fractions=(0.25, 0.5))
    assert isinstance(res, PixelPerturbationResult) and res.fractions == (0.25, 0.5)
    json.dumps(res.to_dict())
    ax = res.plot(label="random")
    res.plot(ax=ax, prob=True)
    assert len(ax.lines) == 2
