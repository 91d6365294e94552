"""compare_attributions: per-example scores, paired bootstrap intervals, ranking, directions."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

from captum_ext import compare_attributions
from captum_ext.compare_metrics import (
    Metric,
    aopc_metric,
    diff_roar_metric,
    infidelity_metric,
    leakage_metric,
    pixel_perturbation_metric,
    sensitivity_metric,
)
from captum_ext.compare_stats import bootstrap_counts, paired_bootstrap

# the toy cases use few examples on purpose; the small-sample warning has its own test
pytestmark = pytest.mark.filterwarnings("ignore:.*percentile bootstrap intervals from:RuntimeWarning")


def _table_metric(table: dict[str, list[float]], name: str = "toy", higher: bool = True) -> Metric:
    """A metric that returns fixed per-example scores, looked up by the (precomputed) map's id."""

    def score(forward_func, inputs, attributions, **context):
        return torch.tensor(table[str(int(attributions[0, 0]))], dtype=torch.float64)

    return Metric(name, score, higher_is_better=higher)


def _toy(table: dict[str, list[float]], higher: bool = True, **kw):
    n = len(next(iter(table.values())))
    net = torch.nn.Linear(2, 2)
    x = torch.zeros(n, 2)
    maps = {name: torch.full((n, 2), float(name)) for name in table}  # the map carries its id
    methods = {f"m{name}": maps[name] for name in table}
    return compare_attributions(net, x, methods, [_table_metric(table, higher=higher)], target=0, **kw)


TABLE = {
    "1": [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.75, 0.9],
    "2": [0.5, 0.7, 0.4, 0.6, 0.55, 0.8, 0.3, 0.65],
    "3": [0.52, 0.66, 0.45, 0.58, 0.5, 0.83, 0.35, 0.6],
}


def test_paired_interval_matches_a_hand_computed_percentile_bootstrap():
    res = _toy(TABLE, n_boot=500, seed=3)
    a, b = np.array(TABLE["1"]), np.array(TABLE["2"])
    idx = np.random.default_rng(3).integers(0, 8, size=(500, 8))  # the documented draw
    d = (a[idx] - b[idx]).mean(axis=1)
    low, high = np.percentile(d, [2.5, 97.5])
    got = res.difference_interval[0, 0, 1].numpy()
    np.testing.assert_allclose(got, [low, high], rtol=0, atol=1e-12)  # float sums in another order
    assert float(res.difference[0, 0, 1]) == pytest.approx((a - b).mean(), abs=1e-15)
    # the interval of a mean uses the same resamples
    np.testing.assert_allclose(
        res.interval[0, 0].numpy(), np.percentile(a[idx].mean(1), [2.5, 97.5]), atol=1e-12
    )


def test_paired_interval_is_narrower_than_an_unpaired_one_when_examples_vary_together():
    rng = np.random.default_rng(0)
    base = rng.normal(size=50) * 5.0  # large shared per-example variation
    s = np.stack([base + 0.3 + rng.normal(size=50) * 0.1, base])
    out = paired_bootstrap(s, 1000, seed=0)
    width = out.difference_interval[0, 1, 1] - out.difference_interval[0, 1, 0]
    unpaired = (out.interval[0, 1] - out.interval[0, 0]) + (out.interval[1, 1] - out.interval[1, 0])
    assert width < 0.1 * unpaired
    assert out.difference_interval[0, 1, 0] > 0  # the paired test sees the +0.3


def test_ranking_counts_only_significant_differences_and_follows_the_direction():
    res = _toy(TABLE, n_boot=1000, seed=0)
    assert res.ranks("toy") == {"m1": 1, "m2": 2, "m3": 2}  # m2 and m3 are not distinguishable
    assert [name for name, _, _ in res.ranking("toy")] == ["m1", "m2", "m3"]  # means 0.81, 0.5625, 0.56125
    sig = res.pairs("toy", significant_only=True)
    assert {(p.better, p.worse) for p in sig} == {("m1", "m2"), ("m1", "m3")}
    assert all(p.difference > 0 and p.low > 0 for p in sig)
    low = _toy(TABLE, higher=False, n_boot=1000, seed=0)  # the same numbers, lower is better
    assert low.ranks("toy") == {"m1": 3, "m2": 1, "m3": 1}
    assert [name for name, _, _ in low.ranking("toy")] == ["m3", "m2", "m1"]
    assert all(p.difference < 0 and p.high < 0 for p in low.pairs("toy", significant_only=True))


def test_bootstrap_is_seeded():
    a, b = _toy(TABLE, seed=1), _toy(TABLE, seed=1)
    assert torch.equal(a.difference_interval, b.difference_interval)
    assert not torch.equal(a.difference_interval, _toy(TABLE, seed=2).difference_interval)


def test_bootstrap_counts_are_the_documented_draw():
    idx = np.random.default_rng(5).integers(0, 4, size=(3, 4))
    expected = np.stack([np.bincount(r, minlength=4) for r in idx]).astype(float)
    np.testing.assert_array_equal(bootstrap_counts(4, 3, seed=5), expected)


def test_nan_scores_drop_the_example_for_every_method_with_a_warning():
    table = {k: list(v) for k, v in TABLE.items()}
    table["2"][0] = math.nan
    with pytest.warns(RuntimeWarning, match="1 of 8 examples"):
        res = _toy(table)
    assert res.n_examples == (7,)
    assert float(res.mean[0, 0]) == pytest.approx(np.mean(TABLE["1"][1:]))


@pytest.mark.filterwarnings("default")
def test_few_examples_warn_that_intervals_are_too_narrow():
    with pytest.warns(RuntimeWarning, match="intervals from 8 examples are too narrow"):
        _toy(TABLE)
    table = {k: v * 3 for k, v in TABLE.items()}  # 24 examples: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _toy(table)


def test_result_table_dict_repr_and_plot():
    res = _toy(TABLE, n_boot=300)
    md = res.to_markdown()
    assert md.splitlines()[0] == "| method | toy (↑) |"
    assert "m1 > m2" in md and "m2 > m3" not in md
    d = res.to_dict()
    json.dumps(d)
    assert d["methods"] == ["m1", "m2", "m3"] and len(d["scores"][0][0]) == 8
    r = repr(res)
    assert r.startswith("Comparison(3 methods x 1 metrics, N=8") and "toy: m1" in r and len(r) < 200
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    axes = res.plot()
    assert len(axes) == 1
    import matplotlib.pyplot as plt

    plt.close("all")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


def test_captum_and_own_metrics_on_a_real_model_with_every_method_kind():
    net = _net()
    x = torch.randn(12, 6)
    methods = {
        "Saliency": Saliency(net),
        "IG": IntegratedGradients(net),
        "x*grad": lambda inputs, target: InputXGradient(net).attribute(inputs, target=target),
        "SmoothGrad": NoiseTunnel(Saliency(net)),
    }
    metrics = [
        infidelity_metric(n_perturb_samples=4),
        sensitivity_metric(n_perturb_samples=2),
        pixel_perturbation_metric((0.25, 0.5)),
        aopc_metric(3),
        leakage_metric(torch.ones(12, 6).index_fill_(1, torch.tensor([0, 1]), 0.0)),
    ]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    res = compare_attributions(net, x, methods, metrics, n_boot=200)
    assert res.scores.shape == (4, 5, 12) and torch.isfinite(res.scores).all()
    assert res.higher_is_better == (False, False, True, True, False)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # a noisy method and a noisy metric give the same numbers on a second run (seeded)
    again = compare_attributions(net, x, methods, metrics, n_boot=200)
    assert torch.equal(res.scores, again.scores)


def test_infidelity_is_normalised_so_scale_does_not_matter():
    net = _net()
    x = torch.randn(10, 6)
    sal = Saliency(net).attribute(x, target=0)
    res = compare_attributions(
        net, x, {"a": sal, "a/30": sal / 30}, [infidelity_metric()], target=0, n_boot=200
    )
    torch.testing.assert_close(res.scores[0], res.scores[1], rtol=1e-4, atol=1e-9)  # float32 forward passes
    raw = compare_attributions(
        net, x, {"a": sal, "a/30": sal / 30}, [infidelity_metric(normalize=False)], target=0, n_boot=200
    )
    assert not torch.allclose(raw.scores[0], raw.scores[1])


def test_errors_name_the_fix():
    net, x = _net(), torch.randn(4, 6)
    with pytest.raises(ValueError, match="at least two methods"):
        compare_attributions(net, x, [Saliency(net)], [infidelity_metric()])
    with pytest.raises(TypeError, match="Metric"):
        compare_attributions(net, x, [Saliency(net), InputXGradient(net)], [lambda *a, **k: None])
    with pytest.raises(ValueError, match="sensitivity_max re-explains"):
        compare_attributions(net, x, {"a": x, "b": x * 2}, [sensitivity_metric()], target=0)
    with pytest.raises(ValueError, match="one per example"):
        compare_attributions(net, x, {"a": x, "b": x}, [Metric("bad", lambda *a, **k: torch.zeros(3), True)])
    with pytest.raises(ValueError, match="n_boot"):
        compare_attributions(net, x, {"a": x, "b": x}, [infidelity_metric()], n_boot=10)
    with pytest.raises(TypeError, match="higher_is_better"):
        Metric("m", lambda *a, **k: None, higher_is_better=1)


def test_diff_roar_metric_matches_diff_roar_without_retraining():
    """Its mean over the examples is diff_roar(retrain=False)'s curve, averaged over k."""
    from captum_ext.metrics import diff_roar

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(30, 10, dtype=torch.float64)
    net = net.double()
    y = net(x).argmax(1)
    attr = torch.randn(30, 10, dtype=torch.float64)  # distinct values: no ties to break
    ks = (0.2, 0.5, 0.8)  # k * 10 units is a whole number: no rounding difference
    ours = compare_attributions(net, x, {"a": attr, "b": -attr}, [diff_roar_metric(ks)], target=y, n_boot=100)
    ref = diff_roar(net, None, (x, y), (None, attr), fractions=ks, retrain=False, baselines=0.0)
    assert float(ours.mean[0, 0]) == pytest.approx(float(ref.diff.mean()), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        diff_roar_metric((0.5, 1.0))
