"""Model and data randomisation sanity checks."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from sklearn.datasets import load_digits
from torch import nn

from captum_ext.metrics.sanity import data_randomization, model_randomization
from captum_ext.training import MLPFactory, Trainer

SMALL_SSIM = {"window_size": 5, "sigma": 1.0}


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 12 * 12, 4)
    ).eval()


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) real scans
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def trained(digits):
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    net = MLPFactory((1, 8, 8), hidden=(32,), num_classes=10)()
    return Trainer(epochs=6, lr=1e-2, batch_size=128)(net, (xtr, ytr), 0)


def test_identity_randomization_gives_similarity_one(untouched):
    net, x = _cnn(), torch.rand(6, 1, 12, 12)
    with untouched(net):
        res = model_randomization(net, x, Saliency, init=lambda m: None, ssim_kwargs=SMALL_SSIM)
    assert res.stages == ("3", "0")  # from the output towards the input
    for metric in ("ssim", "spearman", "topk"):
        assert res.scores[metric].shape == (2, 6)
        assert torch.allclose(res.scores[metric], torch.ones(2, 6), atol=1e-6), metric


def test_cascading_accumulates_and_independent_does_not(untouched):
    net, x = _cnn(), torch.rand(5, 1, 12, 12)
    with untouched(net):
        cas = model_randomization(net, x, Saliency, return_attributions=True, metrics=("spearman",))
        ind = model_randomization(
            net,
            x,
            Saliency,
            mode="independent",
            return_attributions=True,
            metrics=("spearman",),
        )
    assert torch.equal(cas.attributions[0], ind.attributions[0])  # original
    # stage 0 randomises only the output layer in both modes, with the same seeded weights
    assert torch.equal(cas.attributions[1], ind.attributions[1])
    # stage 1: cascading has both layers random, independent only the first one
    assert not torch.allclose(cas.attributions[2], ind.attributions[2])
    # independent stage 1 == a model with only layer '0' re-initialised (same per-layer seed)
    only_first = model_randomization(
        net, x, Saliency, layers=["0"], return_attributions=True, metrics=("spearman",)
    )
    assert torch.equal(only_first.attributions[1], ind.attributions[2])


def test_randomization_is_seeded():
    net, x = _cnn(), torch.rand(4, 1, 12, 12)
    a = model_randomization(net, x, Saliency, seed=3, metrics=("spearman",))
    torch.manual_seed(123)  # the global RNG must not matter
    b = model_randomization(net, x, Saliency, seed=3, metrics=("spearman",))
    c = model_randomization(net, x, Saliency, seed=4, metrics=("spearman",))
    assert torch.equal(a.scores["spearman"], b.scores["spearman"])
    assert not torch.equal(a.scores["spearman"], c.scores["spearman"])


def test_fully_randomised_model_has_near_zero_rank_correlation(trained, digits, untouched):
    _, _, xte, yte = digits
    with untouched(trained):
        res = model_randomization(trained, xte[:64], Saliency, target=yte[:64], ssim_kwargs=SMALL_SSIM)
    assert res.stages == ("3", "1")
    means = res.mean()
    assert set(means) == {"ssim", "spearman", "topk"}
    assert abs(means["spearman"][-1].item()) < 0.15  # every layer random: no rank agreement
    assert means["spearman"][0] > means["spearman"][-1]
    # chance level of the top-k overlap is about the fraction itself
    assert abs(means["topk"][-1].item() - 0.4) < 0.12
    ax = res.plot()
    assert len(ax.get_xticklabels()) == 2


def test_callable_explainer_kwargs_and_batches(untouched):
    # float64: batched and unbatched attributions then agree to ~1e-16, so the discrete top-k sets
    # cannot differ by a near-tie (in float32 the BLAS kernels of different batch sizes could)
    net, x = _cnn().double(), torch.rand(5, 1, 12, 12, dtype=torch.float64)
    full = model_randomization(net, x, InputXGradient, target=1, metrics=("topk",))
    batched = model_randomization(
        net,
        x,
        lambda m: InputXGradient(m).attribute,
        target=1,
        metrics=("topk",),
        max_examples_per_batch=2,
    )
    assert torch.allclose(full.scores["topk"], batched.scores["topk"])
    # attribute_kwargs reach the attribution method
    res = model_randomization(
        net,
        x,
        Saliency,
        target=[0, 1, 2, 3, 0],
        attribute_kwargs={"abs": False},
        absolute=False,
        metrics=("spearman",),
        return_attributions=True,
    )
    assert (res.attributions[0] < 0).any()


def test_non_image_inputs_skip_ssim_by_default():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    res = model_randomization(net, torch.randn(4, 10), Saliency)
    assert set(res.scores) == {"spearman", "topk"}
    with pytest.raises(ValueError, match="SSIM needs image"):
        model_randomization(net, torch.randn(4, 10), Saliency, metrics=("ssim",))


class _NoReset(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 2))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"mode": "sideways"}, ValueError, "mode"),
        ({"layers": ["nope"]}, ValueError, "unknown layer"),
        ({"layers": []}, ValueError, "empty"),
        ({"metrics": ("ssim", "pearson")}, ValueError, "metrics"),
        ({"max_examples_per_batch": 0}, ValueError, "max_examples_per_batch"),
        ({"init": "zeros"}, ValueError, "init"),
    ],
)
def test_model_randomization_errors(kwargs, err, match):
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(err, match=match):
        model_randomization(net, torch.randn(3, 6), Saliency, **kwargs)


def test_model_randomization_more_errors():
    x = torch.randn(3, 6)
    with pytest.raises(ValueError, match="reset_parameters"):
        model_randomization(_NoReset(), x, Saliency)
    with pytest.raises(TypeError, match="Attribution"):
        model_randomization(_NoReset(), x, dict)
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(ValueError, match="eval"):
        model_randomization(bn, x, Saliency)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        model_randomization(_NoReset(), x, lambda m: lambda inp, target: inp[:, :2], init=lambda m: None)


def test_data_randomization_calls_the_trainer_with_permuted_labels(digits, untouched):
    xtr, ytr, xte, _ = digits
    xtr, ytr = xtr[:200], ytr[:200]
    net = MLPFactory((1, 8, 8), hidden=(16,), num_classes=10)().eval()
    calls = []

    def trainer(model, data, seed):
        calls.append((model, data, seed))
        return model.eval()

    with untouched(net):
        res = data_randomization(
            net, xte[:8], Saliency, train_data=(xtr, ytr), trainer=trainer, seed=7, ssim_kwargs=SMALL_SSIM
        )
    ((model, (x_seen, y_seen), seed),) = calls
    assert seed == 7 and model is not net and res.model is model
    assert torch.equal(x_seen, xtr)
    assert torch.equal(y_seen.sort().values, ytr.sort().values) and not torch.equal(y_seen, ytr)
    # the copy was re-initialised before training
    assert not torch.equal(model[1].weight, net[1].weight)
    assert res.mode == "data" and res.stages == ("permuted labels",)
    assert res.scores["spearman"].shape == (1, 8)
    # same seed -> same permutation
    data_randomization(
        net, xte[:8], Saliency, train_data=(xtr, ytr), trainer=trainer, seed=7, metrics=("topk",)
    )
    assert torch.equal(calls[1][1][1], y_seen)


def test_data_randomization_end_to_end(trained, digits, untouched):
    xtr, ytr, xte, yte = digits
    with untouched(trained):
        res = data_randomization(
            trained,
            xte[:64],
            Saliency,
            train_data=(xtr, ytr),
            target=yte[:64],
            trainer=Trainer(epochs=6, lr=1e-2, batch_size=128),
            ssim_kwargs=SMALL_SSIM,
        )
    # a network retrained on the true labels with another seed, for contrast
    torch.manual_seed(1)
    twin = Trainer(epochs=6, lr=1e-2, batch_size=128)(
        MLPFactory((1, 8, 8), hidden=(32,), num_classes=10)(), (xtr, ytr), 1
    )
    from captum_ext.metrics.robustness import stability

    same_labels = stability(
        trained, xte[:64], Saliency, other_forward_func=twin, target=yte[:64], metrics=("spearman",)
    )
    assert res.mean()["spearman"].item() < same_labels.mean()["spearman"] - 0.1
    assert isinstance(res.model, nn.Module) and not res.model.training


def test_data_randomization_errors(digits):
    xtr, ytr, xte, _ = digits
    net = MLPFactory((1, 8, 8), hidden=(8,), num_classes=10)().eval()
    with pytest.raises(TypeError, match="trainer"):
        data_randomization(net, xte[:4], Saliency, train_data=(xtr, ytr), trainer=3)
    with pytest.raises(ValueError, match="differ in length"):
        data_randomization(net, xte[:4], Saliency, train_data=(xtr, ytr[:10]))
    with pytest.raises(TypeError, match="nn.Module"):
        data_randomization(
            net, xte[:4], Saliency, train_data=(xtr[:20], ytr[:20]), trainer=lambda m, d, s: None
        )
