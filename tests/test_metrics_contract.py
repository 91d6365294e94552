"""The metric contract, generated from the registry (``captum_ext.metrics._registry.METRICS``):
one argument dialect, NaN / empty / 1-D data refused, the one model policy (train-mode Dropout and
normalisation with running statistics refused, the model never changed), probabilities never
softmaxed twice, compact result reprs; plus per-metric behaviours of the shared plumbing
(per-example baselines, target forms, one vocabulary of units)."""

import copy
import dataclasses
import functools
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
    diff_roar,
    diff_roar_without_retraining,
    feature_leakage,
    gan_test,
    model_randomization,
    pixel_perturbation,
    relative_fidelity_drop,
    stability,
)
from captum_ext.metrics._registry import METRICS
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


# ---------------------------------------------------------------------------------------- baselines


def test_per_example_baselines_work_with_any_batch_size():
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


def test_baselines_of_another_length_are_refused_not_reused():
    net = Recorder(8)
    x, attr, y = _data()
    half = torch.zeros(3, 2, 2, 2, dtype=DT)
    with pytest.raises(ValueError, match="fits neither"):
        pixel_perturbation(net, x, attr, target=y, baselines=half, fractions=(0.5,), max_examples_per_batch=3)


# --------------------------------------------------------------------------------------- bad input


def test_fractions_must_stand_for_at_least_one_unit():
    net = Recorder(8)
    x, attr, y = _data()
    with pytest.raises(ValueError, match="stand for 0"):
        pixel_perturbation(net, x, attr, target=y, fractions=(1e-6,))


def test_aopc_refuses_nan_and_empty_input():
    net = nn.Linear(4, 3).double().eval()
    x = torch.rand(3, 4, dtype=DT)
    with pytest.raises(ValueError, match="NaN"):
        aopc(net, x, torch.full_like(x, float("nan")), target=0, steps=(1,))
    with pytest.raises(ValueError, match="empty"):
        aopc(net, x[:0], x[:0], target=0, steps=(1,))
    with pytest.raises(ValueError, match="NaN"):
        aopc(net, x * float("nan"), x, target=0, steps=(1,))


def test_channel_dim_reaches_the_fill():
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
def test_train_mode_models_are_refused_and_left_alone(which, untouched):
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
def test_out_of_range_targets_are_refused(which):
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


# ------------------------------------------------------------------------------------------ dialect


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_speaks_one_dialect(name):
    spec = METRICS[name]
    fn = spec.fn
    assert hasattr(fn, "__wrapped__"), f"{name} lacks @log_usage()"
    params = inspect.signature(fn).parameters
    names = list(params)
    expected = (["forward_func"] if spec.model else []) + list(spec.data)
    assert names[: len(expected)] == expected, names
    assert all(params[n].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for n in expected)
    options = [n for n in names[len(expected) :] if n != "aopc_kwargs"]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in options), names
    if "target" in params:
        assert params["target"].kind is inspect.Parameter.KEYWORD_ONLY
    if name != "relative_fidelity_drop":  # forwards **aopc_kwargs
        assert "max_examples_per_batch" in params and params["max_examples_per_batch"].default is None
    for old in ("labels", "targets", "model", "classifier", "batch_size", "progress", "fill", "baseline"):
        assert old not in params, f"{name} still has {old!r}"
    if spec.long_running:
        assert "show_progress" in params, f"{name} trains or loops long but has no show_progress"
    if "show_progress" in params:
        assert params["show_progress"].default is False


def test_per_example_values_beside_the_curves_and_frozen_results():
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


def test_target_forms_agree_and_tuple_inputs_take_per_example_baselines():
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


# ---------------------------------------------------------------------------------- one vocabulary


def test_one_vocabulary_for_units_across_metrics():
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


def test_shared_helpers_live_in_common_not_sanity():
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
        "diff_roar": (
            lambda: diff_roar(net, (x, y), (x, y), (attr, attr), **_retrain(net)),
            lambda: diff_roar(net, (x, y), (x, y), (attr, attr), **_retrain(net), seeds=()),
        ),
        "diff_roar_without_retraining": (
            lambda: diff_roar_without_retraining(net, (x, y), attr, fractions=(0.5,)),
            lambda: diff_roar_without_retraining(net, (x, y), attr, fractions=(1e-6,)),
        ),
    }


def _retrain(net):
    """DiffROAR's retraining options for the small models of these tests (same architecture)."""
    arch = copy.deepcopy(net)
    return dict(
        model_factory=functools.partial(_fresh_copy, arch),
        trainer=Trainer(epochs=1, batch_size=3),
        fractions=(0.5,),
        seeds=(0,),
        mask_control=False,
    )


def _fresh_copy(model):
    fresh = copy.deepcopy(model).train()
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def _invoke(name, net, x, attr, y):
    """Call metric ``name`` on data ``x`` (attributions ``attr``, labels ``y``) with small settings."""
    sal = Saliency(net).attribute
    calls = {
        "aopc": lambda: aopc(net, x, attr, target=y, steps=(1,)),
        "attribution_attack": lambda: attribution_attack(net, x, target=y, epsilon=0.1, steps=1),
        "class_conditional_samples": lambda: class_conditional_samples(
            net, tuple(x.shape[1:]), target=[0], steps=1
        ),
        "data_randomization": lambda: data_randomization(
            net, x, Saliency, train_data=(x, y), trainer=Trainer(epochs=1, batch_size=3), metrics=("topk",)
        ),
        "density_ratio_curve": lambda: density_ratio_curve(net, x, [0.1], target=y),
        "diff_roar": lambda: diff_roar(net, (x, y), (x, y), (attr, attr), **_retrain(net)),
        "diff_roar_without_retraining": lambda: diff_roar_without_retraining(
            net, (x, y), attr, fractions=(1.0,)
        ),
        "feature_leakage": lambda: feature_leakage(x, sal, x > 0.5, target=y),
        "gan_test": lambda: gan_test(net, x, target=y),
        "model_randomization": lambda: model_randomization(net, x, Saliency, target=y, metrics=("topk",)),
        "pixel_perturbation": lambda: pixel_perturbation(net, x, attr, target=y, fractions=(0.5,)),
        "relative_fidelity_drop": lambda: relative_fidelity_drop(
            net, x, attr, attr.abs(), target=y, steps=(1,), output="logit"
        ),
        "stability": lambda: stability(net, x, Saliency, other_forward_func=net, target=y, metrics=("topk",)),
    }
    return calls[name]()


DATA_METRICS = sorted(n for n in METRICS if n != "class_conditional_samples")  # it makes its inputs


def _bad(kind):
    x, attr, y = _data()
    if kind == "nan":
        x = x.clone()
        x[2, 1, 0, 1] = float("nan")
    elif kind == "inf":
        x = x.clone()
        x[0, 0, 0, 0] = float("inf")
    elif kind == "empty":
        x, attr, y = x[:0], attr[:0], y[:0]
    else:  # 1-D: six scalars
        x, attr = x[:, 0, 0, 0].contiguous(), attr[:, 0, 0, 0].contiguous()
    return x, attr, y


@pytest.mark.parametrize(
    ("kind", "message"),
    [("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("empty", "empty"), ("1d", "feature dimension")],
)
@pytest.mark.parametrize("name", DATA_METRICS)
def test_every_metric_refuses_nan_empty_and_1d_data_with_a_clear_error(name, kind, message, untouched):
    net = _net()
    x, attr, y = _bad(kind)
    with untouched(net), pytest.raises(ValueError, match=message):
        _invoke(name, net, x, attr, y)


def test_class_conditional_samples_explains_a_wrong_input_shape():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3)).double().eval()
    net(torch.zeros(1, 1, 4, 4, dtype=DT))  # materialise the lazy layer
    with pytest.raises(ValueError, match="without the batch dimension"):
        class_conditional_samples(net, (16,), target=[0], steps=1)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_refuses_train_mode_instance_norm_with_running_stats(name, untouched):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.InstanceNorm2d(2, track_running_stats=True),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.Tanh(),
        nn.Linear(4, 3),
    ).double()
    x, attr, y = _data()
    with untouched(net), pytest.raises(ValueError, match="training mode"):
        _invoke(name, net, x, attr, y)
    _invoke(name, net.eval(), x, attr, y)  # in eval mode it runs


class _Probabilities(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3).double()

    def forward(self, x):
        return torch.softmax(self.lin(x.flatten(1)), dim=1)


@pytest.mark.parametrize("which", ["pixel_perturbation", "aopc"])
def test_probabilities_are_never_softmaxed_twice(which):
    torch.manual_seed(0)
    net = _Probabilities().eval()
    x, attr, y = _data()
    call = {
        "pixel_perturbation": lambda **kw: pixel_perturbation(net, x, attr, target=y, fractions=(0.5,), **kw),
        "aopc": lambda **kw: aopc(net, x, attr, target=y, steps=(2,), **kw),
    }[which]
    with pytest.raises(ValueError, match="model_outputs='probabilities'"):
        call()
    res = call(model_outputs="probabilities")
    with torch.no_grad():
        want = net(x).gather(1, y[:, None])[:, 0]  # the probabilities themselves, not re-softmaxed
    got = res.baseline_probs if which == "pixel_perturbation" else res.scores[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_attribute_kwargs_reach_the_attribution_in_pixel_perturbation_and_feature_leakage():
    net = Recorder(8)
    x, attr, y = _data()
    seen = []

    def attribute(inputs, target=None, scale=1.0):
        seen.append(scale)
        return inputs * scale

    pixel_perturbation(net, x, attribute, target=y, fractions=(0.5,), attribute_kwargs={"scale": 2.0})
    feature_leakage(x, attribute, x > 0.5, target=y, attribute_kwargs={"scale": 3.0})
    assert seen == [2.0, 3.0]


def test_result_reprs_are_compact():
    net = Recorder(8)
    x = torch.rand(200, 2, 2, 2, dtype=DT)
    attr = torch.rand(200, 2, 2, 2, dtype=DT)
    y = torch.randint(0, 3, (200,))
    results = [
        pixel_perturbation(net, x, attr, target=y, fractions=(0.5, 1.0)),
        aopc(net, x, attr, target=y, steps=(1, 2)),
        density_ratio_curve(net, x, [0.1], target=y),
        feature_leakage(x, attr, x > 0.5),
        gan_test(net, x, target=y),
        diff_roar_without_retraining(net, (x, y), attr, fractions=(0.5, 1.0)),
    ]
    for res in results:
        text = repr(res)
        assert len(text) < 400 and "\n" not in text, text
        assert text.startswith(type(res).__name__ + "(")


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


class _TwoInputs(nn.Module):
    """A classifier of two input tensors (an image-like one and a flat one)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 3).double()
        self.b = nn.Linear(3, 3).double()

    def forward(self, a, b):
        return torch.tanh(self.a(a.flatten(1))) + self.b(b)


def _invoke_tuple(name, net, xs, attrs, y):
    sal = Saliency(net).attribute
    calls = {
        "aopc": lambda: aopc(net, xs, attrs, target=y, steps=(1,), aggregate="abs_sum"),
        "density_ratio_curve": lambda: density_ratio_curve(net, xs, [0.1], target=y),
        "feature_leakage": lambda: feature_leakage(xs, sal, tuple(x > 0.5 for x in xs), target=y),
        "model_randomization": lambda: model_randomization(net, xs, Saliency, target=y, metrics=("topk",)),
        "pixel_perturbation": lambda: pixel_perturbation(net, xs, attrs, target=y, fractions=(0.5,)),
        "relative_fidelity_drop": lambda: relative_fidelity_drop(
            net,
            xs,
            attrs,
            tuple(a.abs() for a in attrs),
            target=y,
            steps=(1,),
            output="logit",
            aggregate="abs_sum",
        ),
        "stability": lambda: stability(
            net, xs, Saliency, other_forward_func=net, target=y, metrics=("topk",)
        ),
        "data_randomization": lambda: data_randomization(
            net, xs, Saliency, train_data=(xs, y), trainer=Trainer(epochs=1, batch_size=3), metrics=("topk",)
        ),
        "attribution_attack": lambda: attribution_attack(net, xs, target=y, epsilon=0.1, steps=1),
        "gan_test": lambda: gan_test(net, xs, target=y),
        "diff_roar": lambda: diff_roar(net, (xs, y), (xs, y), (attrs, attrs), **_retrain(net)),
        "diff_roar_without_retraining": lambda: diff_roar_without_retraining(
            net, (xs, y), attrs, fractions=(1.0,)
        ),
    }
    return calls[name]()


@pytest.mark.parametrize("name", sorted(n for n in METRICS if n != "class_conditional_samples"))
def test_tuple_inputs_work_where_the_registry_says_and_are_refused_clearly_elsewhere(name, untouched):
    torch.manual_seed(0)
    net = _TwoInputs().eval()
    x, attr, y = _data()
    b = torch.rand(6, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    xs, attrs = (x, b), (attr, b.flip(1))
    with untouched(net):
        if METRICS[name].tuple_inputs:
            res = _invoke_tuple(name, net, xs, attrs, y)
            assert isinstance(res, MetricResult)
        else:
            with pytest.raises((TypeError, ValueError), match="tuple|single|one input|tensor"):
                _invoke_tuple(name, net, xs, attrs, y)
