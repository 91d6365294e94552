"""SSIM, Spearman rank correlation and top-k intersection against exact oracles."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import rankdata, spearmanr

from captum_ext.metrics.similarity import (
    normalize_maps,
    rank_average,
    saliency_map,
    spearman,
    ssim,
    topk_intersection,
)

# ---------------------------------------------------------------------------------------------
# SSIM


def _ssim_loops(
    a: np.ndarray,
    b: np.ndarray,
    rng: float,
    win: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Independent oracle: explicit loops over every window position, 2-d Gaussian weights."""
    r = (win - 1) // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    w = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    w /= w.sum()
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            pa, pb = a[i : i + win, j : j + win], b[i : i + win, j : j + win]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_maps_is_one():
    a = torch.rand(4, 16, 13)
    assert torch.allclose(ssim(a, a), torch.ones(4), atol=1e-6)
    assert torch.allclose(ssim(a[:, None], a[:, None]), torch.ones(4), atol=1e-6)


def test_ssim_matches_loop_oracle():
    a = torch.rand(3, 15, 14, dtype=torch.float64)
    b = a + 0.4 * torch.rand(3, 15, 14, dtype=torch.float64) - 0.2
    got = ssim(a, b, data_range=1.0)
    want = [_ssim_loops(a[i].numpy(), b[i].numpy(), 1.0) for i in range(3)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)


def test_ssim_constant_maps_closed_form():
    # sigma terms vanish: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) exactly
    a = torch.full((1, 12, 12), 0.3, dtype=torch.float64)
    b = torch.full((1, 12, 12), 0.7, dtype=torch.float64)
    c1 = (0.01 * 2.0) ** 2
    want = (2 * 0.3 * 0.7 + c1) / (0.3**2 + 0.7**2 + c1)
    assert ssim(a, b, data_range=2.0).item() == pytest.approx(want, abs=1e-12)
    # the same constant twice (joint range 0) is perfectly similar
    assert ssim(a, a.clone()).item() == 1.0


def test_ssim_symmetric_and_batched_like_one_by_one():
    a, b = torch.rand(5, 12, 12), torch.rand(5, 12, 12)
    full = ssim(a, b)
    assert torch.allclose(full, ssim(b, a), atol=1e-6)
    singles = torch.cat([ssim(a[i : i + 1], b[i : i + 1]) for i in range(5)])
    assert torch.allclose(full, singles, atol=1e-6)
    assert full.dtype == torch.float32
    assert ssim(a, b, reduction="none").shape == (5, 2, 2)


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    a = torch.rand(3, 20, 17, dtype=torch.float64)
    b = a + 0.3 * torch.rand(3, 20, 17, dtype=torch.float64)
    got = ssim(a, b)
    for i in range(3):
        rng = float(torch.maximum(a[i].max(), b[i].max()) - torch.minimum(a[i].min(), b[i].min()))
        want = skm.structural_similarity(
            a[i].numpy(),
            b[i].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=rng,
        )
        assert got[i].item() == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window_size": 4}, "odd"),
        ({"window_size": 13}, "smaller than"),
        ({"data_range": 0.0}, "positive"),
        ({"reduction": "sum"}, "reduction"),
    ],
)
def test_ssim_errors(kwargs, match):
    a = torch.rand(2, 12, 12)
    with pytest.raises(ValueError, match=match):
        ssim(a, a, **kwargs)


def test_ssim_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(2, 12, 12), torch.rand(2, 12, 13))
    with pytest.raises(ValueError, match="single-channel"):
        ssim(torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match="NaN"):
        ssim(torch.full((1, 12, 12), math.nan), torch.rand(1, 12, 12))


# ---------------------------------------------------------------------------------------------
# Spearman


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@given(st.integers(0, 10_000), st.integers(2, 30), st.integers(1, 6))
def test_spearman_matches_scipy_with_ties(seed, d, levels):
    g = np.random.default_rng(seed)
    a = g.integers(0, levels + 1, size=(3, d)).astype(np.float64)  # many ties
    b = g.integers(0, 4, size=(3, d)).astype(np.float64) + 0.5 * a
    got = spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(3):
        want = spearmanr(a[i], b[i]).statistic
        if np.isnan(want):
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(want, abs=1e-12)


@given(st.integers(0, 10_000), st.integers(1, 40))
def test_rank_average_matches_scipy(seed, d):
    x = np.random.default_rng(seed).integers(0, 5, size=(4, d)).astype(np.float64)
    got = rank_average(torch.from_numpy(x)).numpy()
    want = np.stack([rankdata(row, method="average") for row in x])
    assert np.array_equal(got, want)


def test_spearman_exact_cases():
    x = torch.randn(2, 50)
    assert torch.allclose(spearman(x, x), torch.ones(2))
    assert torch.allclose(spearman(x, torch.exp(x)), torch.ones(2))  # monotone map
    assert torch.allclose(spearman(x, -x), -torch.ones(2))
    # tuple inputs are concatenated per example
    t = spearman((x[:, :20], x[:, 20:].reshape(2, 5, 6)), (x[:, :20], x[:, 20:].reshape(2, 5, 6)))
    assert torch.allclose(t, torch.ones(2))


def test_spearman_constant_is_nan_and_errors():
    out = spearman(torch.zeros(1, 5), torch.rand(1, 5))
    assert torch.isnan(out).all()
    with pytest.raises(ValueError, match="same shapes"):
        spearman(torch.rand(2, 4), torch.rand(2, 5))
    with pytest.raises(ValueError, match="at least 2"):
        spearman(torch.rand(2, 1), torch.rand(2, 1))
    with pytest.raises(TypeError, match="both"):
        spearman(torch.rand(2, 4), (torch.rand(2, 4),))


# ---------------------------------------------------------------------------------------------
# Top-k intersection


def test_topk_intersection_constructed_maps():
    ref = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # 5 non-zero -> k = ceil(0.4 * 5) = 2: reference top-2 = {0, 1}
    other = torch.tensor([[9.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert topk_intersection(ref, other).item() == pytest.approx(0.5)  # other top-2 = {0, 3}
    assert topk_intersection(ref, ref).item() == 1.0
    # explicit k and fraction of all features: k = 4 -> ref {0,1,2,3}, other {0,3,1,2} (ties)
    assert topk_intersection(ref, other, k=4).item() == 1.0
    assert topk_intersection(ref, other, fraction=0.2, nonzero_only=False).item() == 0.5
    # absolute values by default; signed ranking on request
    neg = -ref
    assert topk_intersection(ref, neg).item() == 1.0
    assert topk_intersection(ref, neg, absolute=False, k=2).item() == 0.0


@given(st.integers(0, 10_000), st.integers(5, 60), st.floats(0.05, 1.0))
def test_topk_intersection_brute_force(seed, d, fraction):
    g = np.random.default_rng(seed)
    ref = g.normal(size=(3, d)) * (g.random((3, d)) > 0.3)
    oth = g.normal(size=(3, d))
    got = topk_intersection(torch.from_numpy(ref), torch.from_numpy(oth), fraction=fraction)
    for i in range(3):
        k = math.ceil(fraction * np.count_nonzero(ref[i]) - 1e-9)
        if k == 0:
            assert math.isnan(got[i])
            continue
        top_r = set(np.argsort(-np.abs(ref[i]), kind="stable")[:k])
        top_o = set(np.argsort(-np.abs(oth[i]), kind="stable")[:k])
        assert got[i].item() == pytest.approx(len(top_r & top_o) / k)


def test_topk_errors_and_zero_reference():
    assert math.isnan(topk_intersection(torch.zeros(1, 4), torch.rand(1, 4)).item())
    with pytest.raises(ValueError, match="fraction"):
        topk_intersection(torch.rand(1, 4), torch.rand(1, 4), fraction=0.0)
    with pytest.raises(ValueError, match="k must be"):
        topk_intersection(torch.rand(1, 4), torch.rand(1, 4), k=5)
    with pytest.raises(ValueError, match="NaN"):
        topk_intersection(torch.full((1, 4), math.nan), torch.rand(1, 4))


def test_maps_helpers():
    a = torch.randn(2, 3, 5, 6)
    assert torch.allclose(saliency_map(a), a.abs().sum(1))
    assert torch.allclose(saliency_map(a[:, 0], absolute=False), a[:, 0])
    with pytest.raises(ValueError, match="image"):
        saliency_map(torch.rand(2, 5))
    m = normalize_maps(torch.stack([torch.arange(4.0), torch.full((4,), 3.0)]))
    assert torch.equal(m, torch.tensor([[0.0, 1 / 3, 2 / 3, 1.0], [0.0, 0.0, 0.0, 0.0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_similarity_on_cuda_matches_cpu():
    a, b = torch.rand(3, 14, 14), torch.rand(3, 14, 14)
    for fn in (ssim, spearman, topk_intersection):
        got = fn(a.cuda(), b.cuda())
        assert got.device.type == "cuda"
        assert torch.allclose(got.cpu(), fn(a, b), atol=1e-5)
