"""AOPC under MoRF removal and the relative fidelity drop, against closed forms."""

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from torch import nn

from captum_ext.metrics.fidelity import aopc, relative_fidelity_drop


def _linear(d: int = 10, c: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d, c).double().eval()


def _aopc_oracle(attr: np.ndarray, steps, fps: int) -> np.ndarray:
    """Linear model, grad x input, baseline 0, logits: removing feature i lowers the logit by
    exactly attr_i, so f(x^(0)) - f(x^(l)) is the sum of the l * fps largest attributions."""
    out = []
    for a in attr:
        s = np.sort(a)[::-1]
        drops = np.array([s[: l * fps].sum() for l in range(max(steps) + 1)])
        out.append([drops[: L + 1].mean() for L in steps])
    return np.array(out).T  # (len(steps), N)


def test_aopc_linear_gradient_times_input_closed_form(untouched):
    net = _linear()
    x = torch.randn(7, 10, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    attr = InputXGradient(net).attribute(x.clone().requires_grad_(True), target=t).detach()
    want = _aopc_oracle(attr.numpy(), (0, 1, 3, 5), 2)
    with untouched(net):
        res = aopc(net, x, attr, target=t, steps=(0, 1, 3, 5), features_per_step=2, output="logit")
        via_fn = aopc(
            net,
            x,
            InputXGradient(net).attribute,
            target=t,
            steps=(0, 1, 3, 5),
            features_per_step=2,
            output="logit",
            max_examples_per_batch=3,
        )
    assert res.steps == (0, 1, 3, 5)
    assert res.aopc.shape == (4, 7) and res.scores.shape == (6, 7)
    assert np.allclose(res.aopc.numpy(), want, atol=1e-10)
    assert torch.allclose(via_fn.aopc, res.aopc, atol=1e-10)
    assert torch.equal(res.aopc[0], torch.zeros(7))
    assert torch.allclose(res.mean(), res.aopc.mean(dim=1))


def test_aopc_probability_matches_manual_loop():
    net = _linear(6, 4, seed=1)
    x = torch.randn(3, 6, dtype=torch.float64)
    attr = torch.randn(3, 6, dtype=torch.float64)
    res = aopc(net, x, attr, steps=3, baselines=0.5)
    with torch.no_grad():
        t = net(x).argmax(1)  # default target: predicted class
        for i in range(3):
            order = torch.argsort(attr[i], descending=True, stable=True)
            probs = []
            for l in range(4):
                xi = x[i].clone()
                xi[order[:l]] = 0.5
                probs.append(torch.softmax(net(xi[None]), 1)[0, t[i]])
            probs = torch.stack(probs)
            assert res.aopc[0, i].item() == pytest.approx((probs[0] - probs).mean().item())
    assert torch.equal(res.target, t)


def test_aopc_pixels_over_channels_and_mean_baseline():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double().eval()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    attr = InputXGradient(net).attribute(x.clone().requires_grad_(True), target=1).detach()
    res = aopc(net, x, attr, target=1, steps=(4,), aggregate="sum", channel_dim=1, output="logit")
    pixel_attr = attr.sum(dim=1).reshape(4, -1).numpy()  # a pixel's removal drops its channel sum
    assert np.allclose(res.aopc.numpy(), _aopc_oracle(pixel_attr, (4,), 1), atol=1e-10)
    # 'mean' baseline: removed coordinates take the example's mean value
    w = net[1].weight[1].detach().reshape(2, 3, 3)
    res_m = aopc(
        net, x, attr, target=1, steps=(2,), aggregate="sum", channel_dim=1, output="logit", baselines="mean"
    )
    for i in range(4):
        order = torch.argsort(attr[i].sum(0).reshape(-1), descending=True, stable=True)
        drops = [0.0]
        for l in (1, 2):
            mask = torch.zeros(9, dtype=torch.bool)
            mask[order[:l]] = True
            mask = mask.reshape(3, 3).expand(2, 3, 3)
            drops.append(float((w * (x[i] - x[i].mean()) * mask).sum()))
        assert res_m.aopc[0, i].item() == pytest.approx(np.mean(drops), abs=1e-10)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

    def forward(self, x1, x2, scale=1.0):
        return scale * (self.a(x1) + self.b(x2))


def test_aopc_tuple_inputs_and_additional_args():
    torch.manual_seed(0)
    net = _TwoInputs().double().eval()
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    attr = InputXGradient(net).attribute(
        (x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)),
        target=0,
        additional_forward_args=(2.0,),
    )
    attr = tuple(a.detach() for a in attr)
    res = aopc(net, (x1, x2), attr, target=0, steps=(7,), output="logit", additional_forward_args=(2.0,))
    flat = torch.cat([attr[0], attr[1]], dim=1).numpy()
    assert np.allclose(res.aopc.numpy(), _aopc_oracle(flat, (7,), 1), atol=1e-10)


def test_relative_fidelity_drop(untouched):
    net = _linear()
    x = torch.randn(6, 10, dtype=torch.float64)
    attr = InputXGradient(net).attribute(x.clone().requires_grad_(True), target=0).detach()
    kw = {"steps": (2, 5), "output": "logit"}
    with untouched(net):
        same = relative_fidelity_drop(net, x, attr, attr.clone(), target=0, **kw)
        worse = relative_fidelity_drop(net, x, attr, -attr, target=0, **kw)
    assert torch.equal(same.drop, torch.zeros(2, dtype=same.drop.dtype))
    base, proc = aopc(net, x, attr, target=0, **kw).mean(), aopc(net, x, -attr, target=0, **kw).mean()
    assert torch.allclose(worse.drop, 100 * (base - proc) / base)
    assert (worse.drop > 0).all()  # least relevant first is less faithful
    assert worse.steps == (2, 5)
    # sparsified gradient (keep the top 30%, zero the rest) vs the full gradient
    keep = attr >= attr.quantile(0.7, dim=1, keepdim=True)
    sparse = torch.where(keep, attr, torch.zeros_like(attr))
    res = relative_fidelity_drop(net, x, attr, sparse, target=0, **kw)
    assert res.drop[0].item() == pytest.approx(0.0, abs=1e-9)  # top features unchanged early
    assert res.drop[1].item() >= -1e-9


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"steps": (11,)}, ValueError, "exceeds"),
        ({"steps": ()}, ValueError, "steps"),
        ({"features_per_step": 0}, ValueError, "features_per_step"),
        ({"output": "loss"}, ValueError, "output"),
        ({"baselines": "median"}, ValueError, "baselines"),
        ({"baselines": torch.zeros(3)}, ValueError, "fits neither"),
        ({"aggregate": "sum", "channel_dim": 0}, ValueError, "channel_dim"),
        ({"max_examples_per_batch": -1}, ValueError, "max_examples_per_batch"),
    ],
)
def test_aopc_errors(kwargs, err, match):
    net = _linear()
    x = torch.randn(2, 10, dtype=torch.float64)
    with pytest.raises(err, match=match):
        aopc(net, x, torch.rand(2, 10), target=0, **{"steps": 1, **kwargs})


def test_aopc_more_errors():
    net = _linear()
    x = torch.randn(2, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        aopc(net, x, torch.rand(2, 9), target=0, steps=1)
    with pytest.raises(TypeError, match="attributions"):
        aopc(net, x, "saliency", target=0, steps=1)
    bn = nn.Sequential(nn.Linear(10, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="eval"):
        aopc(bn, x.float(), torch.rand(2, 10), steps=1)
    zero = nn.Linear(10, 2).double().eval()
    nn.init.zeros_(zero.weight)
    with pytest.raises(ValueError, match="mean AOPC is 0"):
        relative_fidelity_drop(
            zero, x, torch.rand(2, 10), torch.rand(2, 10), target=0, steps=(1,), output="logit"
        )
