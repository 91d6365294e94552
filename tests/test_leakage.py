import math

import pytest
import torch
from captum.attr import Saliency
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_ext.datasets import BlockMNIST, SignedBasisToy
from captum_ext.metrics import feature_leakage
from captum_ext.training import MLPFactory, fit


def _leak(attr, mask, **kw):
    """Leakage of precomputed attributions (the inputs only fix the shape)."""
    return feature_leakage(attr, attr, mask, **kw).leakage


def test_oracle_and_anti_oracle_on_block_mnist():
    x, _, mask = BlockMNIST("test", n=20, seed=0).tensors()
    assert torch.equal(_leak(mask.float(), mask), torch.zeros(20, dtype=torch.float64))
    assert torch.equal(_leak((~mask).float(), mask), torch.ones(20, dtype=torch.float64))
    # a constant attribution puts exactly half of its mass on the 28x28 signal block of a 56x28 image
    assert torch.allclose(_leak(torch.ones_like(x), mask), torch.full((20,), 0.5).double())
    # the image itself leaks exactly the null patch's share of the ink
    ink_out = (x * ~mask).sum(dim=(1, 2, 3))
    expected = (ink_out / x.sum(dim=(1, 2, 3))).double()
    assert torch.allclose(_leak(x, mask), expected)


def test_top_k_share_exact():
    attr = torch.tensor([[5.0, -4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 9.0, 8.0, 1.0]])
    mask = torch.tensor([[True, False, True, False, False], [True, True, False, False, False]])
    assert _leak(attr, mask, top_k=1).tolist() == [0.0, 1.0]
    assert _leak(attr, mask, top_k=2).tolist() == [0.5, 1.0]
    assert _leak(attr, mask, top_k=4).tolist() == [0.5, 0.75]
    assert _leak(attr, mask, top_k=0.4).tolist() == [0.5, 1.0]  # 40% of 5 = 2
    mass = _leak(attr, mask)
    assert mass.tolist() == pytest.approx([7 / 15, 18 / 18])


def test_mask_broadcasts_over_channels_and_zero_attribution_is_nan():
    attr = torch.zeros(2, 3, 2, 2)
    attr[0, :, 0, 0] = 1.0  # inside
    attr[0, 1, 1, 1] = 3.0  # outside
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[:, :, 0, 0] = True
    out = _leak(attr, mask)
    assert out[0].item() == pytest.approx(0.5) and math.isnan(out[1].item())


@given(
    n=st.integers(1, 4),
    d=st.integers(2, 30),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 1000),
)
def test_leakage_is_a_share_and_scale_and_sign_invariant(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    attr = torch.randn(n, d, generator=g, dtype=torch.float64)
    mask = torch.rand(n, d, generator=g) < 0.4
    base = _leak(attr, mask)
    assert bool(((base >= 0) & (base <= 1)).all())
    assert torch.allclose(_leak(-scale * attr, mask), base)
    k = int(torch.randint(1, d + 1, (1,), generator=g))
    top = _leak(attr, mask, top_k=k)
    assert torch.allclose((top * k).round(), top * k)  # a count over k
    outside = (~mask).sum(dim=1)
    assert bool((top <= torch.clamp(outside.double() / k, max=1.0)).all())


def test_linear_model_gradient_leakage_is_exact_with_a_callable():
    """Input gradients of a linear model are input-agnostic (Shah et al., Fig. 5b): W[target]."""
    x, y, mask = SignedBasisToy(50, d=10, seed=0).tensors()
    torch.manual_seed(0)
    model = fit(nn.Linear(10, 2), (x, y), epochs=20, lr=5e-2, progress=False)
    w = model.weight.detach().abs()
    expected = 1.0 - w[y, mask.float().argmax(dim=1)] / w[y].sum(dim=1)
    got = feature_leakage(x, Saliency(model).attribute, mask, target=y, max_examples_per_batch=16).leakage
    assert torch.allclose(got, expected.double(), atol=1e-6)
    assert bool((got > 0.5).all())  # at least the other task-relevant coordinates leak


def test_standard_mlp_leaks_into_the_null_block(untouched):
    """Shah et al. Sec. 5: a standard model's saliency is not confined to the signal block."""
    train, test = BlockMNIST("train", seed=0), BlockMNIST("test", seed=0, n=40)
    torch.manual_seed(0)
    net = fit(MLPFactory((1, 56, 28), hidden=(32,))(), train, epochs=3, lr=3e-3, progress=False)
    x, y, mask = test.tensors()
    with untouched(net):
        leak = feature_leakage(x, Saliency(net).attribute, mask, target=y).leakage
    assert leak.shape == (40,) and bool((leak > 0.05).all())


def test_errors():
    attr, mask = torch.rand(3, 4), torch.rand(3, 4) > 0.5
    with pytest.raises(ValueError, match="broadcast"):
        _leak(attr, mask[:, :3])
    with pytest.raises(ValueError, match="examples"):
        _leak(attr, mask[:2])
    with pytest.raises(ValueError, match="top_k"):
        _leak(attr, mask, top_k=5)
    with pytest.raises(ValueError, match="top_k"):
        _leak(attr, mask, top_k=1.5)
    with pytest.raises(ValueError, match="shaped like"):
        feature_leakage(attr, lambda x, target: x[:, :2], mask)
    with pytest.raises(ValueError, match="mask"):
        feature_leakage((attr, attr), (attr, attr), mask)
    with pytest.raises(ValueError, match="empty"):
        _leak(attr[:0], mask[:0])
