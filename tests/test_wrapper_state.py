"""Wrapper state and inputs: data-parallel unwrapping, TorchScript, clamp ranges, weight selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.regularizers import (
    AttentionHarmonizedTraining,
    InputGradientPenalty,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
    WeightPenalty,
    pgd_perturbation,
)
from captum_ext.regularizers.penalties import penalised_parameters


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))


def test_model_unwraps_data_parallel_so_its_state_dict_loads_into_the_plain_model():
    net = bn_net()
    for parallel in (nn.DataParallel(net),):
        wrapper = WeightPenalty(InputGradientPenalty(parallel))
        assert wrapper.model is net
        fresh = bn_net()
        fresh.load_state_dict(wrapper.model.state_dict())  # no "module." prefix
        x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        wrapper.loss(x, y).backward()  # the task forward goes through the DataParallel


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_jit_script_of_a_wrapper_scripts_the_plain_model():
    net = bn_net().eval()
    scripted = torch.jit.script(InputGradientPenalty(net))
    x = torch.randn(3, 4)
    assert torch.equal(scripted(x), net(x))


@pytest.mark.parametrize(
    "attack",
    [
        lambda m, x, y: pgd_perturbation(m, x, y, norm="inf", eps=0.1, clamp=(0, 1)),
        lambda m, x, y: PGDAdversarialTraining(m, eps=0.1, clamp=(0, 1)).loss(x, y),
        lambda m, x, y: NormRegularizedAdversarialTraining(m, clamp=(0, 1)).loss(x, y),
        lambda m, x, y: AttentionHarmonizedTraining(m, attention=torch.ones(1, 4), clamp=(0, 1)).loss(x, y),
    ],
)
def test_attacks_refuse_inputs_outside_the_clamp_range(attack):
    # standardised data with clamp=(0, 1): clamping moved inputs by up to 2.0 at eps = 0.1
    x = torch.randn(5, 4) * 2
    with pytest.raises(ValueError, match="outside clamp"):
        attack(bn_net(), x, torch.tensor([0, 1, 2, 0, 1]))


def test_weight_penalty_states_and_filters_the_penalised_parameters():
    net = bn_net()
    wrapper = WeightPenalty(net, p=1, lam=1e-3)
    assert wrapper.penalised_names() == ["0.weight", "3.weight"]  # not BatchNorm's gamma, no biases
    matrices = WeightPenalty(net, p=1, include=lambda name, w: name.startswith("0."))
    assert matrices.penalised_names() == ["0.weight", "0.bias"]
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    matrices.loss(x, y)
    expected = net[0].weight.abs().sum() + net[0].bias.abs().sum()
    assert matrices.last_parts["weight_l1"] == pytest.approx(float(expected))
    assert [n for n, _ in penalised_parameters(net, include_bias=True)] == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
    ]
    with pytest.raises(ValueError, match="either include"):
        WeightPenalty(net, include=lambda n, w: True, include_bias=True)
    with pytest.raises(ValueError, match="no trainable weights"):
        WeightPenalty(net, include=lambda n, w: False)
