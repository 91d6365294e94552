"""CASO, CAFO and SmoothCASO follow Captum's sign convention by default (positive = evidence for the
target, like signed Saliency of the target logit); ``orientation="paper"`` returns the paper's
loss-increasing perturbation, exactly the negation."""

import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from captum.attr import visualization as viz
from torch import nn

from benchmarks._repro import small_cnn
from captum_ext import CAFO, CASO, SmoothCASO
from captum_ext.attr.options import CAFOOptions, CASOOptions
from captum_ext.datasets import SklearnDigits
from captum_ext.training import fit

from ._nets import relu_mlp

N_IMAGES = 64


@pytest.fixture(scope="module")
def trained_digits():
    """A small ReLU CNN trained 3 epochs on the offline digits (93 % test accuracy), with test images
    and its predicted classes."""
    torch.manual_seed(0)
    data = SklearnDigits()
    x_train, y_train = data.load("train")
    x_test, _ = data.load("test")
    model = small_cnn()
    fit(model, (x_train[:, None], y_train), epochs=3, lr=3e-3, seed=0, progress=False)
    x = x_test[:N_IMAGES, None]
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def _maps(model, x, target, orientation):
    torch.manual_seed(1)
    return {
        "CASO": CASO(model).attribute(x, target=target, orientation=orientation),
        "CAFO": CAFO(model).attribute(x, target=target, orientation=orientation),
        "NoiseTunnel(CASO)": NoiseTunnel(CASO(model)).attribute(
            x, target=target, nt_samples=4, stdevs=0.15, orientation=orientation
        ),
    }


def _saliency(model, x, target):
    return Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=False)


def test_default_orientation_agrees_in_sign_with_signed_saliency_on_a_trained_cnn(trained_digits):
    model, x, target = trained_digits
    sal = _saliency(model, x, target).flatten(1)
    for orientation, sign in (("captum", 1.0), ("paper", -1.0)):
        for name, a in _maps(model, x, target, orientation).items():
            cos = nn.functional.cosine_similarity(a.flatten(1), sal)
            share = float((sign * cos > 0).double().mean())
            # measured: 100 % of the 64 images (median cosine +0.84) in Captum's orientation
            assert share >= 0.9, (orientation, name, share, float(cos.median()))


def _positive_heat(attr, image):
    """The heat map ``captum.attr.visualization.visualize_image_attr(..., sign="positive")`` draws."""
    a = attr / attr.abs().max()  # scale-free; avoids Captum's warning about maps close to 0
    _, ax = viz.visualize_image_attr(
        a.permute(1, 2, 0).numpy(), image.permute(1, 2, 0).numpy(), "heat_map", "positive", use_pyplot=False
    )
    heat = torch.as_tensor(ax.images[0].get_array().filled(0.0))
    return heat


def test_sign_positive_view_shows_evidence_for_the_target(trained_digits):
    """The pixels ``sign="positive"`` shows for CASO / CAFO are where Saliency's positive part is: most
    of the drawn heat lies on pixels Saliency draws too (the paper orientation draws the opposite)."""
    model, x, target = trained_digits
    n = 16
    sal = _saliency(model, x[:n], target[:n])
    sal_heat = [_positive_heat(sal[i], x[i]) for i in range(n)]
    for orientation in ("captum", "paper"):
        maps = _maps(model, x[:n], target[:n], orientation)
        for name in ("CASO", "CAFO"):
            shares = []
            for i in range(n):
                heat = _positive_heat(maps[name][i], x[i])
                shares.append(float((heat * (sal_heat[i] > 0)).sum() / heat.sum()))
            shares = torch.tensor(shares)
            if orientation == "captum":
                # measured: every image above 0.75, median 0.93
                assert float((shares > 0.5).double().mean()) >= 0.9, (name, shares)
            else:
                assert float((shares < 0.5).double().mean()) >= 0.9, (name, shares)


def test_paper_orientation_is_the_exact_negation_and_details_do_not_change():
    model = relu_mlp(d=6, c=3, hidden=8)
    x = torch.randn(3, 6, dtype=torch.float64)
    for make in (CASO, CAFO, lambda m: SmoothCASO(m, nt_samples=3)):
        default, paper = make(model), make(model)
        torch.manual_seed(2)
        a = default.attribute(x, lambda1=1e-3)
        torch.manual_seed(2)
        b = paper.attribute(x, lambda1=1e-3, orientation="paper")
        assert torch.equal(a, -b)
        assert torch.equal(default.last_details.objective, paper.last_details.objective)
        torch.manual_seed(2)
        a_abs = default.attribute(x, lambda1=1e-3, abs=True)
        assert torch.equal(a_abs, b.abs())
        torch.manual_seed(2)
        sa = default.sweep(x, [0.0, 1e-3])
        torch.manual_seed(2)
        sb = paper.sweep(x, [0.0, 1e-3], orientation="paper")
        assert torch.equal(sa, -sb)
    torch.manual_seed(3)
    nt = NoiseTunnel(CASO(model)).attribute(x, target=1, nt_samples=3)
    torch.manual_seed(3)
    nt_paper = NoiseTunnel(CASO(model)).attribute(x, target=1, nt_samples=3, orientation="paper")
    assert torch.equal(nt, -nt_paper)


def test_orientation_is_validated_with_a_message_naming_both_values():
    model = relu_mlp(d=6, c=3, hidden=8)
    x = torch.randn(2, 6, dtype=torch.float64)
    assert CASOOptions().orientation == CAFOOptions().orientation == "captum"
    calls = (
        lambda o: CASO(model).attribute(x, orientation=o),
        lambda o: CASO(model).sweep(x, [0.0], orientation=o),
        lambda o: CAFO(model).attribute(x, orientation=o),
        lambda o: CAFO(model).sweep(x, [0.0], orientation=o),
    )
    for call in calls:
        for bad in ("Captum", "signed", None):
            with pytest.raises(ValueError, match="'captum'.*'paper'"):
                call(bad)
