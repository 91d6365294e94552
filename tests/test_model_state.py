"""The one train-mode policy (captum_ext._model_state), enforced by CASO / CAFO and the metrics."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from captum_ext import CAFO, CASO
from captum_ext._model_state import (
    ModelState,
    check_per_example,
    has_stochastic_or_batch_layers,
    refuse_train_mode_layers,
)

DT = torch.float64


def _conv(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(DT)


@pytest.mark.parametrize(
    "norm, refused",
    [
        (nn.BatchNorm2d(2), True),
        (nn.SyncBatchNorm(2), True),
        (nn.LazyBatchNorm2d(), True),
        (nn.InstanceNorm2d(2, track_running_stats=True), True),
        (nn.InstanceNorm2d(2, affine=True), False),  # no running statistics: the same in both modes
        (nn.GroupNorm(1, 2), False),
        (nn.Dropout(0.1), True),
    ],
)
def test_every_normalisation_with_running_stats_in_train_mode_is_listed(norm, refused):
    net = _conv(norm).train()
    assert bool(has_stochastic_or_batch_layers(net)) == refused
    assert has_stochastic_or_batch_layers(net.eval()) == []


def test_caso_refuses_train_mode_instance_norm_with_running_stats_and_leaves_it_alone():
    torch.manual_seed(0)
    net = _conv(nn.InstanceNorm2d(2, track_running_stats=True)).train()
    x = torch.randn(2, 1, 6, 6, dtype=DT)
    before = ModelState.of(net)
    for method in (CASO, CAFO):
        for forward in (net, lambda z: net(z), functools.partial(net)):
            with pytest.raises(ValueError, match="training mode"):
                method(forward).attribute(x, target=0)
    assert ModelState.of(net) == before


def test_batch_norm_hidden_from_inspection_is_refused_for_a_batch_of_one():
    torch.manual_seed(0)
    net = _conv(nn.BatchNorm2d(2)).train()
    hidden = {"net": net}

    def opaque(z):  # no closure, no bound method: owning-module inspection cannot see the model
        return hidden["net"](z)

    before = ModelState.of(net)
    with pytest.raises(ValueError, match="training mode"):
        CASO(opaque).attribute(torch.randn(1, 1, 6, 6, dtype=DT), target=0)
    assert ModelState.of(net) == before


def test_refusal_happens_before_the_layer_runs():
    bn = nn.BatchNorm1d(3).train()
    with pytest.raises(ValueError), refuse_train_mode_layers("x"):
        bn(torch.randn(4, 3))
    assert int(bn.num_batches_tracked) == 0
    bn(torch.randn(4, 3))  # the hook is gone afterwards
    assert int(bn.num_batches_tracked) == 1


def test_coupling_probe_is_sound_for_a_batch_of_one():
    def coupled(z):  # mixes the examples of a batch the way functional batch statistics do
        return z - z.mean(0, keepdim=True) + 0.1 * z

    x = torch.randn(1, 3, dtype=DT)
    with pytest.raises(ValueError, match="another example"):
        check_per_example(coupled, (x,), (), coupled(x), "CASO")
    check_per_example(lambda z: 2 * z, (x,), (), 2 * x, "CASO")


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize(
    "coupling",
    [
        lambda z: z - z.mean(0, keepdim=True) + 0.1 * z,  # batch statistics
        lambda z: z.cumsum(0),  # each example sees the ones before it
        lambda z: z.flip(0).cumsum(0).flip(0),  # ... or the ones after it
        lambda z: z + 0.5 * z.roll(1, 0),  # a neighbour
    ],
    ids=["mean", "scan", "reverse_scan", "roll"],
)
def test_coupling_probe_sees_dependence_in_either_direction(n, coupling):
    # the probe is a batch of three whatever n is: a cheap probe must still catch a scan over dim 0
    # whose first example (the probed one) is independent of the rest
    x = torch.randn(n, 3, dtype=DT, generator=torch.Generator().manual_seed(n))
    with pytest.raises(ValueError, match="another example"):
        check_per_example(coupling, (x,), (), coupling(x), "CASO")
    check_per_example(torch.tanh, (x,), (), torch.tanh(x), "CASO")


def test_coupling_probe_costs_three_examples_and_slices_additional_args():
    seen = []

    def model(z, scale):
        seen.append((z.shape[0], scale.shape[0]))
        return z * scale

    x = torch.randn(16, 3, dtype=DT)
    scale = torch.rand(16, 1, dtype=DT) + 0.5
    check_per_example(model, (x,), (scale,), x * scale, "CASO")
    assert seen == [(3, 3)]
