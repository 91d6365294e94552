import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from captum_ext.datasets import (
    BlockMNIST,
    SignedBasisToy,
    SimplifiedBlockMNIST,
    SklearnDigits,
    TorchvisionMNIST,
    get_digit_source,
    null_patch,
)

# ------------------------------------------------------------------------------------ digit sources


def test_sklearn_digits_split_is_fixed_stratified_and_disjoint():
    src = SklearnDigits()
    xtr, ytr = src.load("train")
    xte, yte = src.load("test")
    assert xtr.shape[1:] == (28, 28) and xtr.dtype == torch.float32
    assert len(ytr) + len(yte) == 1797
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    # every class is split 80/20 (one in five goes to test)
    for c in range(10):
        n_tr, n_te = int((ytr == c).sum()), int((yte == c).sum())
        assert n_te == (n_tr + n_te) // 5
    # MNIST geometry: a 20x20 box centred in the frame, a 4-pixel empty margin
    assert float(xtr[:, :4].abs().sum() + xtr[:, 24:].abs().sum()) == 0.0
    assert float(xtr[:, :, :4].abs().sum() + xtr[:, :, 24:].abs().sum()) == 0.0
    # deterministic, and no image is in both splits
    xtr2, _ = SklearnDigits().load("train")
    assert torch.equal(xtr, xtr2)
    flat_tr = {tuple(r.tolist()) for r in xtr.flatten(1)[:, ::7]}
    assert not any(tuple(r.tolist()) in flat_tr for r in xte.flatten(1)[:, ::7])


def test_digit_source_resolution_and_errors():
    assert isinstance(get_digit_source("digits"), SklearnDigits)
    src = get_digit_source("mnist", root="/nonexistent/mnist")
    assert isinstance(src, TorchvisionMNIST) and src.root == "/nonexistent/mnist"
    with pytest.raises(ValueError, match="root"):
        get_digit_source("mnist")
    with pytest.raises(ValueError, match="unknown digit source"):
        get_digit_source("cifar")
    with pytest.raises(TypeError, match="load"):
        get_digit_source(object())
    with pytest.raises(ValueError, match="split"):
        SklearnDigits().load("validation")
    with pytest.raises(ValueError):
        SklearnDigits(test_fraction=0.0)


def test_torchvision_source_converts_mnist(monkeypatch):
    """The real torchvision path, with torchvision's MNIST class replaced by an offline fake."""
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            self.data = torch.tensor([[[0, 255], [128, 0]]], dtype=torch.uint8).expand(3, 2, 2)
            self.targets = torch.tensor([0, 1, 7])

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    images, labels = TorchvisionMNIST("/data", download=True).load("test")
    assert calls == [("/data", False, True)]
    assert images.dtype == torch.float32 and float(images.max()) == 1.0
    assert images[0, 1, 0].item() == pytest.approx(128 / 255)
    assert labels.tolist() == [0, 1, 7]


# --------------------------------------------------------------------------------------- null patch


def test_null_patch_square_with_diagonals():
    p = null_patch()
    assert p.shape == (28, 28) and set(p.unique().tolist()) == {0.0, 1.0}
    # symmetric under transpose and both flips (a square with its two diagonals)
    assert torch.equal(p, p.T) and torch.equal(p, p.flip(0)) and torch.equal(p, p.flip(1))
    # two horizontal and two vertical sides, 2 px wide, spanning the 20x20 box
    for r in (4, 5, 22, 23):
        assert p[r, 4:24].sum() == 20 and p[4:24, r].sum() == 20
    # two slanted lines through the centre
    idx = torch.arange(4, 24)
    assert bool(p[idx, idx].all()) and bool(p[idx, 27 - idx].all())
    # nothing outside the box
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[4:24, 4:24] = True
    assert float(p[~box].sum()) == 0.0


# --------------------------------------------------------------------------------------- BlockMNIST


def test_block_mnist_geometry():
    ds = BlockMNIST("train", seed=0)
    x, y, m = ds.tensors()
    n = len(ds)
    assert x.shape == (n, 1, 56, 28) and m.shape == (n, 1, 56, 28) and m.dtype == torch.bool
    assert y.dtype == torch.long and set(y.tolist()) == {0, 1}
    # the signal mask is exactly one 28x28 block, top or bottom
    assert bool((m.sum(dim=(1, 2, 3)) == 784).all())
    top = ds.signal_on_top
    assert bool(m[top, :, :28].all()) and not bool(m[top, :, 28:].any())
    assert bool(m[~top, :, 28:].all()) and not bool(m[~top, :, :28].any())
    # the null block is the fixed patch, the signal block a digit of the label's class
    patch = null_patch()
    null_blocks = torch.where(top[:, None, None], x[:, 0, 28:], x[:, 0, :28])
    assert bool((null_blocks == patch).all())
    src_x, src_y = SklearnDigits().load("train")
    keep = (src_y == 0) | (src_y == 1)
    signal_blocks = torch.where(top[:, None, None], x[:, 0, :28], x[:, 0, 28:])
    assert torch.equal(signal_blocks, src_x[keep])
    assert torch.equal(y, src_y[keep])
    # random placement: both positions occur, roughly half each
    assert 0.35 < float(top.float().mean()) < 0.65


def test_block_mnist_top_and_determinism():
    top = BlockMNIST("test", top=True, seed=3)
    assert bool(top.signal_on_top.all())
    assert bool(top.signal_masks[:, :, :28].all()) and not bool(top.signal_masks[:, :, 28:].any())
    a, b = BlockMNIST("test", seed=1), BlockMNIST("test", seed=1)
    for s, t in zip(a.tensors(), b.tensors(), strict=True):
        assert torch.equal(s, t)
    c = BlockMNIST("test", seed=2)
    assert not torch.equal(a.signal_on_top, c.signal_on_top)
    assert "BlockMNIST-Top" in repr(top)


def test_block_mnist_options():
    ds = BlockMNIST("test", classes=(3, 8), n=10, seed=0)
    assert len(ds) == 10 and set(ds.digits.tolist()) <= {3, 8}
    assert torch.equal(ds.labels, (ds.digits == 8).long())
    big = BlockMNIST("test", n=200, seed=0)  # more than the 71 test digits: drawn with replacement
    assert len(big) == 200
    item = ds[0]
    assert len(item) == 3 and item[0].shape == (1, 56, 28)
    x, y = next(iter(DataLoader(BlockMNIST("test", n=4, with_masks=False), batch_size=4)))
    assert x.shape == (4, 1, 56, 28) and y.shape == (4,)
    multi = BlockMNIST("test", classes=(0, 1, 2))
    assert set(multi.labels.tolist()) == {0, 1, 2}


def test_block_mnist_custom_source_and_errors():
    class Source:
        def load(self, split):
            imgs = torch.zeros(4, 28, 28)
            imgs[:, 10:18, 10:18] = 1.0
            return imgs, torch.tensor([0, 1, 0, 1])

    ds = BlockMNIST("train", source=Source(), seed=0)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="split"):
        BlockMNIST("val")
    with pytest.raises(ValueError, match="distinct"):
        BlockMNIST(classes=(1, 1))
    with pytest.raises(ValueError, match="n must be"):
        BlockMNIST(n=0)
    with pytest.raises(ValueError, match="no images"):
        BlockMNIST("train", source=Source(), classes=(5, 6))


# ----------------------------------------------------------------------------- simplified BlockMNIST


@given(
    d=st.integers(1, 6).map(lambda k: 2 * k),
    d_tilde=st.integers(1, 4),
    eta=st.sampled_from([0.0, 0.01, 0.3]),
    seed=st.integers(0, 1000),
)
def test_simplified_block_mnist_follows_eq2(d, d_tilde, eta, seed):
    ds = SimplifiedBlockMNIST(40, d=d, d_tilde=d_tilde, eta=eta, seed=seed, dtype=torch.float64)
    x, y, m = ds.tensors()
    assert x.shape == (40, d * d_tilde) and m.shape == x.shape
    blocks = x.reshape(40, d, d_tilde)
    j = ds.signal_block
    assert bool((j < d // 2).all())  # the signal sits in a task-relevant block
    assert torch.equal(ds.labels, (ds.signs + 1) // 2)
    u = ds.u_star
    noise = blocks.clone()
    rows = torch.arange(40)
    noise[rows, j] -= ds.signs[:, None].double() * u
    assert bool((noise.norm(dim=-1) <= eta + 1e-12).all())  # eta * g with g in the unit ball
    if eta == 0:
        assert float(noise.abs().max()) == 0.0
    expected_mask = torch.zeros(40, d, d_tilde, dtype=torch.bool)
    expected_mask[rows, j] = True
    assert torch.equal(m, expected_mask.reshape(40, -1))
    again = SimplifiedBlockMNIST(40, d=d, d_tilde=d_tilde, eta=eta, seed=seed, dtype=torch.float64)
    assert torch.equal(again.inputs, x)


def test_simplified_block_mnist_balance_and_errors():
    ds = SimplifiedBlockMNIST(4000, d=10, seed=0)
    assert 0.45 < float(ds.labels.float().mean()) < 0.55
    counts = torch.bincount(ds.signal_block, minlength=10)
    assert bool((counts[:5] > 700).all()) and int(counts[5:].sum()) == 0
    u = torch.tensor([0.6, 0.8])
    ds2 = SimplifiedBlockMNIST(5, d=4, d_tilde=2, u_star=u)
    assert torch.allclose(ds2.u_star, u)
    with pytest.raises(ValueError, match="even"):
        SimplifiedBlockMNIST(5, d=5)
    with pytest.raises(ValueError, match="unit norm"):
        SimplifiedBlockMNIST(5, d=4, d_tilde=2, u_star=[1.0, 1.0])
    with pytest.raises(ValueError, match="d_tilde"):
        SimplifiedBlockMNIST(5, d=4, d_tilde=2, u_star=[1.0])
    with pytest.raises(ValueError, match="eta"):
        SimplifiedBlockMNIST(5, eta=-1.0)


def test_signed_basis_toy_is_y_times_basis_vector():
    ds = SignedBasisToy(500, d=10, seed=4)
    x, y, m = ds.tensors()
    j = ds.signal_block
    expected = torch.zeros(500, 10)
    expected[torch.arange(500), j] = ds.signs.float()
    assert torch.equal(x, expected)
    assert torch.equal(m, expected != 0)
    assert ds.signal_dims == 5 and int(j.max()) == 4
    full = SignedBasisToy(500, d=10, signal_dims=10, seed=4)
    assert int(full.signal_block.max()) == 9
    with pytest.raises(ValueError):
        SignedBasisToy(5, d=10, signal_dims=11)
