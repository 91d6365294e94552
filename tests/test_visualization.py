"""Tests of captum_ext.visualization: exact normalisation oracles, properties, and figures (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from captum_ext.visualization import (  # noqa: E402
    aggregate_channels,
    images_for_display,
    normalize_diverging,
    normalize_saliency,
    plot_attribution_grid,
)

# ------------------------------------------------------------------------------------ exact values


def test_percentile_cap_exact_on_a_ramp():
    a = torch.arange(100, dtype=torch.float64).reshape(1, 1, 10, 10)  # values 0..99
    m = normalize_saliency(a)
    cap = 98.01  # numpy's linear 99th percentile of 0..99: 98 + 0.01 * (99 - 98)
    expected = (torch.arange(100, dtype=torch.float64) / cap).clamp(max=1.0).reshape(1, 10, 10)
    torch.testing.assert_close(m, expected, rtol=1e-12, atol=0)
    assert m.shape == (1, 10, 10)
    assert float(m[0, 9, 9]) == 1.0 and float(m[0, 9, 8]) < 1.0  # only the top value saturates


def test_channels_abs_summed_then_capped():
    # two channels, signs must not cancel: |1| + |-2| = 3, |-1| + |0| = 1, 0, |4| + |4| = 8
    a = torch.tensor([[[[1.0, -1.0], [0.0, 4.0]], [[-2.0, 0.0], [0.0, 4.0]]]], dtype=torch.float64)
    torch.testing.assert_close(
        aggregate_channels(a), torch.tensor([[[3.0, 1.0], [0.0, 8.0]]], dtype=torch.float64)
    )
    m = normalize_saliency(a, percentile=100)
    torch.testing.assert_close(
        m, torch.tensor([[[3 / 8, 1 / 8], [0.0, 1.0]]], dtype=torch.float64), rtol=1e-15, atol=0
    )


def test_other_reductions_exact():
    a = torch.tensor([[[3.0, -1.0], [-4.0, 2.0]]])  # (N=1, C=2, P=2), channel_dim=1
    torch.testing.assert_close(aggregate_channels(a, 1, "abs_max"), torch.tensor([[4.0, 2.0]]))
    torch.testing.assert_close(aggregate_channels(a, 1, "l2"), torch.tensor([[5.0, 5.0**0.5]]))
    torch.testing.assert_close(aggregate_channels(a, 1, "sum"), torch.tensor([[-1.0, 1.0]]))
    # channels last
    torch.testing.assert_close(
        aggregate_channels(a.transpose(1, 2), -1, "abs_sum"), torch.tensor([[7.0, 3.0]])
    )
    # no channel dimension
    torch.testing.assert_close(aggregate_channels(a[:, 0], None), torch.tensor([[3.0, 1.0]]))


def test_matches_numpy_percentile_oracle():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, 7, 5, generator=gen, dtype=torch.float64)
    m = normalize_saliency(a, percentile=95)
    mag = np.abs(a.numpy()).sum(axis=1)
    for i in range(3):
        cap = np.percentile(mag[i], 95)
        np.testing.assert_allclose(m[i].numpy(), np.clip(mag[i] / cap, 0, 1), rtol=1e-12)


def test_sparse_map_falls_back_to_its_maximum():
    # 2 non-zero pixels out of 300: the 99th percentile (position 0.99 * 299 = 296.01 of the
    # sorted values) is 0, so the map is divided by its maximum instead
    a = torch.zeros(1, 1, 10, 30)
    a[0, 0, 2, 3], a[0, 0, 7, 11] = -1.0, 3.0
    m = normalize_saliency(a)
    expected = torch.zeros(1, 10, 30)
    expected[0, 2, 3], expected[0, 7, 11] = 1 / 3, 1.0
    torch.testing.assert_close(m, expected)


def test_all_zero_map_stays_zero_and_examples_are_independent():
    a = torch.zeros(2, 1, 4, 4)
    a[1] = torch.arange(16.0).reshape(1, 4, 4)
    m = normalize_saliency(a)
    assert torch.equal(m[0], torch.zeros(4, 4))
    torch.testing.assert_close(m[1:], normalize_saliency(a[1:]))
    assert torch.isfinite(m).all()


def test_diverging_exact_and_sign_preserving():
    a = torch.tensor([[[[-4.0, 2.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, -3.0]]]])  # sums -4, 2, 0, -2
    m = normalize_diverging(a, percentile=100)
    torch.testing.assert_close(m, torch.tensor([[[-1.0, 0.5], [0.0, -0.5]]]))
    ramp = torch.linspace(-2.0, 1.0, 101).reshape(1, 1, 101)
    d = normalize_diverging(ramp, channel_dim=None, percentile=90)
    assert torch.equal(torch.sign(d), torch.sign(ramp)) and d.min() == -1.0
    assert torch.equal(normalize_diverging(torch.zeros(1, 1, 3, 3)), torch.zeros(1, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_input(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        a = torch.randn(2, 3, 5, 4, dtype=dtype, device=dev)
        for m in (normalize_saliency(a), normalize_diverging(a)):
            assert m.dtype == dtype and m.device.type == dev and m.shape == (2, 5, 4)


# ------------------------------------------------------------------------------------- properties

_maps = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda s: torch.randn(2, 2, 6, 5, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
)


@given(
    _maps,
    st.floats(min_value=1e-3, max_value=1e3),
    st.sampled_from([-1.0, 1.0]),
    st.floats(min_value=1.0, max_value=100.0),
)
def test_scale_and_sign_invariance_and_range(a, scale, sign, percentile):
    m = normalize_saliency(a, percentile=percentile)
    assert m.min() >= 0 and m.max() <= 1 and m.max() == 1.0
    torch.testing.assert_close(
        normalize_saliency(sign * scale * a, percentile=percentile), m, rtol=1e-12, atol=1e-12
    )
    d = normalize_diverging(a, percentile=percentile)
    assert d.abs().max() <= 1
    torch.testing.assert_close(
        normalize_diverging(-scale * a, percentile=percentile), -d, rtol=1e-12, atol=1e-12
    )


@given(_maps, st.floats(min_value=1.0, max_value=99.0))
def test_share_of_saturated_pixels_matches_the_percentile(a, percentile):
    m = normalize_saliency(a, percentile=percentile)
    flat = m.reshape(2, -1)
    # strictly above the cap -> saturated; at most ceil((1 - q) * P) + 1 values exceed a quantile
    n = flat.shape[1]
    allowed = int(np.ceil((100 - percentile) / 100 * n)) + 2
    assert ((flat == 1.0).sum(dim=1) <= allowed).all()
    assert ((flat == 1.0).sum(dim=1) >= 1).all()


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "err"),
    [
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), percentile=0), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), percentile=101), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), reduce="sum"), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), reduce="mean"), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), channel_dim=0), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2), channel_dim=4), ValueError),
        (lambda: normalize_saliency(torch.ones(1, 4)), ValueError),  # no channel dim to reduce
        (lambda: normalize_saliency(torch.ones(1, 1, 2, 2, dtype=torch.long)), TypeError),
        (lambda: normalize_saliency(torch.full((1, 1, 2, 2), float("nan"))), ValueError),
        (lambda: normalize_saliency(torch.ones(0, 1, 2, 2)), ValueError),
        (lambda: normalize_saliency(np.ones((1, 1, 2, 2))), TypeError),
        (lambda: images_for_display(torch.ones(1, 2, 3, 3)), ValueError),  # 2 channels
    ],
)
def test_clear_errors(call, err):
    with pytest.raises(err):
        call()


def test_images_for_display():
    x = torch.rand(2, 1, 4, 3)
    assert torch.equal(images_for_display(x), x[:, 0])  # in [0, 1]: unchanged
    y = torch.tensor([[[[-1.0, 1.0], [3.0, 1.0]]]])  # out of range: min-max scaled
    torch.testing.assert_close(images_for_display(y), torch.tensor([[[0.0, 0.5], [1.0, 0.5]]]))
    rgb = images_for_display(torch.rand(1, 3, 4, 5))
    assert rgb.shape == (1, 4, 5, 3)
    assert torch.equal(images_for_display(torch.full((1, 1, 2, 2), 7.0)), torch.zeros(1, 2, 2))


# ---------------------------------------------------------------------------------------- figures


def test_grid_shows_the_normalised_maps(tmp_path):
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 8, 6, generator=gen)
    maps = {"grad": torch.randn(3, 1, 8, 6, generator=gen), "other": torch.randn(3, 1, 8, 6, generator=gen)}
    masks = torch.zeros(3, 1, 8, 6, dtype=torch.bool)
    masks[:, :, :4] = True
    fig = plot_attribution_grid(
        images,
        maps,
        row_titles=["a", "b", "c"],
        outlines=masks,
        annotations={"grad": ["x", "y", "z"]},
        title="T",
    )
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 3 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["input", "grad", "other"]
    assert [axes[3 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert [axes[3 * i + 1].get_xlabel() for i in range(3)] == ["x", "y", "z"]
    for i in range(3):
        shown = np.asarray(axes[3 * i + 2].images[0].get_array())
        np.testing.assert_allclose(shown, normalize_saliency(maps["other"])[i].numpy())
        np.testing.assert_allclose(np.asarray(axes[3 * i].images[0].get_array()), images[i, 0].numpy())
        assert all(len(axes[3 * i + j].patches) == 1 for j in range(3))  # the outline box
    box = axes[0].patches[0]
    assert box.get_height() == pytest.approx(3 + 0.4) and box.get_width() == pytest.approx(5.4)
    path = tmp_path / "grid.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_diverging_and_rgb():
    x = torch.rand(2, 3, 5, 5)
    fig = plot_attribution_grid(x, {"m": torch.randn(2, 3, 5, 5)}, normalize="diverging")
    im = fig.axes[1].images[0]
    assert im.get_clim() == (-1.0, 1.0) and im.get_cmap().name == "bwr"
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (5, 5, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attributions": {}},
        {"attributions": {"m": torch.randn(2, 1, 4, 5)}},  # wrong shape
        {"row_titles": ["only one"]},
        {"normalize": "log"},
        {"outlines": torch.ones(2, 3, 3, dtype=torch.bool)},
        {"annotations": {"nope": ["a", "b"]}},
        {"annotations": {"m": ["a"]}},
    ],
)
def test_grid_errors(kwargs):
    args = {"images": torch.rand(2, 1, 4, 4), "attributions": {"m": torch.randn(2, 1, 4, 4)}}
    args.update(kwargs)
    with pytest.raises(ValueError):
        plot_attribution_grid(**args)


def test_long_column_titles_do_not_run_into_each_other():
    """Tutorial 04's grid: titles wider than their cell are wrapped, and their boxes do not overlap."""
    import matplotlib

    matplotlib.use("Agg")
    names = ["anti-score matching", "SM (authors' code)", "anti-SM (authors' code)"]
    gen = torch.Generator().manual_seed(0)
    maps = {n: torch.randn(2, 1, 56, 28, generator=gen) for n in names}
    fig = plot_attribution_grid(torch.rand(2, 1, 56, 28, generator=gen), maps, cell_size=(1.25, 2.3))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:4]]
    for left, right in zip(boxes[:-1], boxes[1:], strict=True):
        assert left.x1 <= right.x0, "column titles overlap"
    assert fig.axes[1].get_title() == "anti-score\nmatching"
