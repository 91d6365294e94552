"""Issue 12, findings 3, 4, 5 and 7 (metrics other than DiffROAR): each test failed on the old code.

* 3: ``pixel_perturbation`` checked ``fill`` per batch (per-example baselines broke with batching);
* 4: unchecked input (fractions that keep nothing, NaN/empty input for ``aopc``, ``channel_dim`` not
  passed to the fill, train-mode models only warned about and then changed);
* 5: not Captum's dialect (labels third, ``fill``/``batch_size``/``progress``, batch means only);
* 7: scattered masking plumbing (``reduce=``/``aggregate=``, helpers imported from ``sanity.py``).

And the guarantee that no metric changes the model, also when it raises.
"""

import dataclasses
import inspect
import json

import pytest
import torch
from captum.attr import Saliency
from torch import nn

from captum_ext.metrics import (
    MetricResult,
    aopc,
    attribution_attack,
    class_conditional_samples,
    data_randomization,
    density_ratio_curve,
    feature_leakage,
    gan_test,
    model_randomization,
    pixel_perturbation,
    relative_fidelity_drop,
    stability,
)
from captum_ext.training import Trainer

DT = torch.float64


class Recorder(nn.Module):
    """A fixed linear classifier that records every batch it is given."""

    def __init__(self, d, classes=3):
        super().__init__()
        self.lin = nn.Linear(d, classes).double()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 2, 2, generator=g, dtype=DT)
    return x, torch.rand(n, 2, 2, 2, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------------------------------ finding 3


def test_finding3_per_example_baselines_work_with_any_batch_size():
    torch.manual_seed(0)
    net = Recorder(8)
    x, attr, y = _data()
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=DT)  # one per example
    ref = pixel_perturbation(net, x, attr, target=y, baselines=base, fractions=(0.25, 1.0))
    # removing everything leaves exactly the per-example baselines: an exact oracle
    with torch.no_grad():
        want = torch.softmax(net.lin(base.flatten(1)), dim=1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(ref.probs[1], want, rtol=0, atol=1e-15)
    for bs in (1, 4, 5):
        res = pixel_perturbation(
            net, x, attr, target=y, baselines=base, fractions=(0.25, 1.0), max_examples_per_batch=bs
        )
        assert torch.equal(res.correct, ref.correct)
        # float64 linear model: batching changes at most the last bits of the probabilities
        torch.testing.assert_close(res.probs, ref.probs, rtol=0, atol=1e-14)


def test_finding3_baselines_of_another_length_are_refused_not_reused():
    net = Recorder(8)
    x, attr, y = _data()
    half = torch.zeros(3, 2, 2, 2, dtype=DT)
    with pytest.raises(ValueError, match="fits neither"):
        pixel_perturbation(net, x, attr, target=y, baselines=half, fractions=(0.5,), max_examples_per_batch=3)


# ------------------------------------------------------------------------------------------ finding 4


def test_finding4_fractions_must_stand_for_at_least_one_unit():
    net = Recorder(8)
    x, attr, y = _data()
    with pytest.raises(ValueError, match="stand for 0"):
        pixel_perturbation(net, x, attr, target=y, fractions=(1e-6,))


def test_finding4_aopc_refuses_nan_and_empty_input():
    net = nn.Linear(4, 3).double().eval()
    x = torch.rand(3, 4, dtype=DT)
    with pytest.raises(ValueError, match="NaN"):
        aopc(net, x, torch.full_like(x, float("nan")), target=0, steps=(1,))
    with pytest.raises(ValueError, match="empty"):
        aopc(net, x[:0], x[:0], target=0, steps=(1,))
    with pytest.raises(ValueError, match="NaN"):
        aopc(net, x * float("nan"), x, target=0, steps=(1,))


def test_finding4_channel_dim_reaches_the_fill():
    """Channels-last images: 'channel_mean' is the mean of each channel, not of dim 1."""
    x = torch.tensor([[[[1.0, 10.0], [3.0, 30.0]], [[5.0, 50.0], [7.0, 70.0]]]], dtype=DT)  # (1,H,W,C)
    attr = torch.tensor([[[[4.0, 4.0], [3.0, 3.0]], [[2.0, 2.0], [1.0, 1.0]]]], dtype=DT)
    net = Recorder(8)
    pixel_perturbation(
        net, x, attr, target=0, baselines="channel_mean", channel_dim=-1, fractions=(0.5,), seed=0
    )
    out = net.seen[-1][0]
    # the two least relevant pixels (row 1) get channel means 4 and 40; row 0 is kept
    assert out[1].tolist() == [[4.0, 40.0], [4.0, 40.0]]
    assert torch.equal(out[0], x[0, 0])


@pytest.mark.parametrize("which", ["pixel_perturbation", "density_ratio_curve", "aopc"])
def test_finding4_train_mode_models_are_refused_and_left_alone(which, untouched):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double().train()
    x, attr, y = _data()
    with untouched(net), pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        if which == "pixel_perturbation":
            pixel_perturbation(net, x, attr, target=y)
        elif which == "density_ratio_curve":
            density_ratio_curve(net, x, [0.1], target=y)
        else:
            aopc(net, x, attr, target=y, steps=(1,))


@pytest.mark.parametrize("which", ["pixel_perturbation", "aopc", "density_ratio_curve", "gan_test"])
def test_finding4_out_of_range_targets_are_refused(which):
    net = Recorder(8)
    x, attr, _ = _data()
    bad = [0, 1, 2, 3, 0, 1]  # 3 classes
    with pytest.raises(ValueError, match=r"target index 3 \(example 3\) is out of range"):
        if which == "pixel_perturbation":
            pixel_perturbation(net, x, attr, target=bad, fractions=(0.5,))
        elif which == "aopc":
            aopc(net, x, attr, target=bad, steps=(1,))
        elif which == "density_ratio_curve":
            density_ratio_curve(net, x, [0.1], target=bad)
        else:
            gan_test(net, x, target=bad)


# ------------------------------------------------------------------------------------------ finding 5

METRICS = {
    "pixel_perturbation": pixel_perturbation,
    "aopc": aopc,
    "relative_fidelity_drop": relative_fidelity_drop,
    "density_ratio_curve": density_ratio_curve,
    "model_randomization": model_randomization,
    "data_randomization": data_randomization,
    "stability": stability,
    "attribution_attack": attribution_attack,
    "class_conditional_samples": class_conditional_samples,
    "gan_test": gan_test,
    "feature_leakage": feature_leakage,
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_finding5_one_dialect(name):
    fn = METRICS[name]
    assert hasattr(fn, "__wrapped__"), f"{name} lacks @log_usage()"
    params = inspect.signature(fn).parameters
    names = list(params)
    if name == "feature_leakage":  # no model: inputs first, as captum.metrics.sensitivity_max
        assert names[:2] == ["inputs", "attributions"]
    else:
        assert names[0] == "forward_func", names
    if name not in ("class_conditional_samples", "feature_leakage"):
        assert names[1] == "inputs", names
    assert params["target"].kind is inspect.Parameter.KEYWORD_ONLY
    if name != "relative_fidelity_drop":  # forwards **aopc_kwargs
        assert "max_examples_per_batch" in params and params["max_examples_per_batch"].default is None
    for old in ("labels", "targets", "model", "classifier", "batch_size", "progress", "fill", "baseline"):
        assert old not in params, f"{name} still has {old!r}"
    if "show_progress" in params:
        assert params["show_progress"].default is False


def test_finding5_per_example_values_beside_the_curves_and_frozen_results():
    net = Recorder(8)
    x, attr, y = _data()
    pp = pixel_perturbation(net, x, attr, target=y, fractions=(0.5, 1.0))
    assert pp.correct.shape == (2, 6) and pp.probs.shape == (2, 6)
    assert torch.equal(pp.accuracy, pp.correct.to(DT).mean(dim=1))
    ao = aopc(net, x, attr, target=y, steps=(1, 3))
    dr = density_ratio_curve(net, x, [0.1, 1.0], target=y)
    fl = feature_leakage(x, attr, x > 0.5)
    gt = gan_test(net, x, target=y)
    assert ao.aopc.shape == (2, 6) and dr.ratios.shape == (2, 6) and fl.leakage.shape == (6,)
    assert gt.correct.shape == (6,)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for res in (pp, ao, dr, fl, gt):
        assert isinstance(res, MetricResult) and dataclasses.is_dataclass(res)
        assert type(res).__dataclass_params__.frozen
        json.dumps(res.to_dict())
        assert res.plot() is not None
    plt.close("all")


def test_finding5_target_forms_agree_and_tuple_inputs_take_per_example_baselines():
    net = Recorder(8)
    x, attr, y = _data()
    ref = pixel_perturbation(net, x, attr, target=y, fractions=(0.5,))
    for t in (y.tolist(), y.view(-1, 1), y.to(torch.int32)):
        assert torch.equal(pixel_perturbation(net, x, attr, target=t, fractions=(0.5,)).correct, ref.correct)

    class Two(nn.Module):
        def forward(self, a, b, scale):
            return scale * torch.stack([a.flatten(1).sum(1), b.sum(1), -a.flatten(1).sum(1)], 1)

    a, b = x, torch.rand(6, 3, dtype=DT)
    base = (torch.zeros(6, 2, 2, 2, dtype=DT), torch.arange(6, dtype=DT)[:, None].expand(6, 3))
    kw = {"target": 1, "baselines": base, "steps": (3,), "output": "logit", "aggregate": "abs_sum"}
    full = aopc(Two(), (a, b), (attr, b), additional_forward_args=(2.0,), **kw)
    batched = aopc(Two(), (a, b), (attr, b), additional_forward_args=(2.0,), max_examples_per_batch=4, **kw)
    # float64, and the model sums per example: batching changes nothing beyond rounding
    torch.testing.assert_close(full.aopc, batched.aopc, rtol=0, atol=1e-12)
    # exact oracle for the b-part: logit 1 is 2 * sum(b); the units of all inputs are ranked together,
    # and removing a b-feature replaces it by that example's baseline value (its index)
    scores = torch.cat([attr.abs().sum(1).flatten(1), b], dim=1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    for i in range(6):
        vals = b[i].clone()
        expect = [2.0 * float(vals.sum())]
        for unit in order[i, :3].tolist():
            if unit >= 4:
                vals[unit - 4] = float(i)
            expect.append(2.0 * float(vals.sum()))
        assert full.scores[:, i].tolist() == pytest.approx(expect, abs=1e-12)


# ------------------------------------------------------------------------------------------ finding 7


def test_finding7_one_vocabulary_for_units_across_metrics():
    """``aggregate=`` means the same in pixel perturbation, AOPC and leakage (one engine)."""
    x = torch.rand(4, 3, 2, 2, dtype=DT) + 1.0
    attr = torch.rand(4, 3, 2, 2, dtype=DT)
    net = Recorder(12)
    pp = pixel_perturbation(net, x, attr, target=0, baselines=0.0, fractions=(0.25,), order="most")
    removed_pp = net.seen[-1] == 0.0
    aopc(net, x, attr, target=0, baselines=0.0, steps=(1,), aggregate="abs_sum")
    removed_aopc = net.seen[-1] == 0.0  # step 1 removes the single most relevant pixel
    assert pp.counts == (1,)
    assert torch.equal(removed_pp, removed_aopc)
    # the same pixel is the top-1 unit of feature_leakage with the same aggregate
    leak = feature_leakage(x, attr, removed_pp, top_k=1, aggregate="abs_sum")
    assert leak.leakage.tolist() == [0.0] * 4


def test_finding7_shared_helpers_live_in_common_not_sanity():
    import captum_ext.metrics.fidelity as fidelity
    import captum_ext.metrics.robustness as robustness
    import captum_ext.metrics.samples as samples

    for mod in (fidelity, robustness, samples):
        src = inspect.getsource(mod)
        assert "from captum_ext.metrics.sanity import (" not in src
        assert "metrics.sanity import check" not in src
    assert not hasattr(fidelity, "_unit_scores") and not hasattr(fidelity, "_baselines")


# --------------------------------------------------------------------- no metric changes the model


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
    ).double()
    net[1].weight.grad = torch.ones_like(net[1].weight)
    net[5].bias.requires_grad_(False)
    return net.eval()


def _calls(net, x, attr, y):
    mask = x > 0.5
    sal = Saliency(net).attribute
    tiny = Trainer(epochs=1, batch_size=3)
    return {
        "pixel_perturbation": (
            lambda: pixel_perturbation(net, x, sal, target=y, fractions=(0.5,)),
            lambda: pixel_perturbation(net, x, sal, target=y, fractions=(1e-6,)),
        ),
        "aopc": (
            lambda: aopc(net, x, sal, target=y, steps=(2,)),
            lambda: aopc(net, x, attr * float("nan"), target=y, steps=(2,)),
        ),
        "relative_fidelity_drop": (
            lambda: relative_fidelity_drop(net, x, attr, attr.abs(), target=y, steps=(2,), output="logit"),
            lambda: relative_fidelity_drop(net, x, attr, attr, target=[5] * 6, steps=(2,)),
        ),
        "density_ratio_curve": (
            lambda: density_ratio_curve(net, x, [0.1], target=y),
            lambda: density_ratio_curve(net, x, [-0.1], target=y),
        ),
        "feature_leakage": (
            lambda: feature_leakage(x, sal, mask, target=y),
            lambda: feature_leakage(x, sal, mask[:3], target=y),
        ),
        "model_randomization": (
            lambda: model_randomization(net, x, Saliency, target=y, metrics=("spearman",)),
            lambda: model_randomization(net, x, Saliency, target=y, layers=["nope"]),
        ),
        "data_randomization": (
            lambda: data_randomization(net, x, Saliency, train_data=(x, y), trainer=tiny, metrics=("topk",)),
            lambda: data_randomization(net, x, Saliency, train_data=(x, y), trainer=3),
        ),
        "stability": (
            lambda: stability(net, x, Saliency, other_forward_func=net, target=y, metrics=("topk",)),
            lambda: stability(net, x, Saliency, other_forward_func=net, metrics=("l2",)),
        ),
        "attribution_attack": (
            lambda: attribution_attack(net, x, target=y, epsilon=0.1, steps=2),
            lambda: attribution_attack(net, x, target=y, epsilon=0.0),
        ),
        "class_conditional_samples": (
            lambda: class_conditional_samples(net, (2, 2, 2), target=[0, 1], steps=2),
            lambda: class_conditional_samples(net, (2, 2, 2), target=[0, 1], lr=0.0),
        ),
        "gan_test": (
            lambda: gan_test(net, x, target=y),
            lambda: gan_test(net, x, target=[3] * 6),
        ),
    }


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_metric_changes_the_model_also_when_it_raises(name, untouched):
    net = _net()
    x, attr, y = _data()
    ok, fails = _calls(net, x, attr, y)[name]
    with untouched(net):
        ok()
    with untouched(net), pytest.raises((ValueError, TypeError)):
        fails()
    net.train()  # the one train-mode policy: refused before the model is touched
    with untouched(net), pytest.raises(ValueError, match="training mode"):
        ok()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_follow_the_inputs_device():
    net = Recorder(8).cuda()
    x, attr, y = (t.cuda() for t in _data())
    base = torch.rand(x.shape, dtype=DT, device="cuda")
    pp = pixel_perturbation(
        net, x, attr, target=y, baselines=base, fractions=(0.5,), max_examples_per_batch=4
    )
    ref = pixel_perturbation(
        net.cpu(), x.cpu(), attr.cpu(), target=y.cpu(), baselines=base.cpu(), fractions=(0.5,)
    )
    net.cuda()
    assert torch.equal(pp.correct, ref.correct)
    torch.testing.assert_close(pp.probs, ref.probs, rtol=0, atol=1e-12)  # float64 on both devices
    ao = aopc(net, x, attr, target=y, baselines=base, steps=(2,), max_examples_per_batch=4)
    assert ao.aopc.device.type == "cuda"
    fl = feature_leakage(x, attr, x > 0.5, top_k=2)
    assert fl.leakage.shape == (6,)
