"""One training-step policy for every regularizer wrapper, alone and nested two deep.

During one ``loss(x, y)`` call the plain model's BatchNorm layers see exactly one training-mode forward
pass: on the clean batch, or on the adversarial batch for adversarial training (Madry et al.); every
auxiliary forward pass (attacks, gradient penalties, noisy copies) runs with frozen statistics. So the
running statistics after a step equal those of plain training on that batch.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from captum_ext.regularizers import (
    AntiScoreMatching,
    AttentionHarmonizedTraining,
    GradientNormRegularizer,
    InputGradientPenalty,
    NormRegularizedAdversarialTraining,
    PGDAdversarialTraining,
    RegularizedModel,
    ScoreMatching,
    WeightPenalty,
)
from captum_ext.regularizers.adversarial import _AdversarialWrapper

ATTENTION = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

WRAPPERS = {
    "score_matching": lambda m: ScoreMatching(m),
    "anti_score_matching": lambda m: AntiScoreMatching(m, sigma=1e-2),
    "grad_norm": lambda m: GradientNormRegularizer(m),
    "input_grad": lambda m: InputGradientPenalty(m),
    "weight": lambda m: WeightPenalty(m),
    "pgd": lambda m: PGDAdversarialTraining(m, norm="inf", eps=0.2, steps=2, random_start=False),
    "nr_l1": lambda m: NormRegularizedAdversarialTraining(m, norm="l1", eps=0.1, warmup_steps=0),
    "nr_group_iterative": lambda m: NormRegularizedAdversarialTraining(
        m, norm="group", eps=0.3, group_size=2, iterative=True, steps=2, warmup_steps=0
    ),
    "nr_elastic": lambda m: NormRegularizedAdversarialTraining(
        m, norm="elastic", eps=0.1, eps2=0.05, warmup_steps=0
    ),
    "attention": lambda m: AttentionHarmonizedTraining(m, eps=0.3, attention=ATTENTION),
}


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Softplus(beta=10),
        nn.Flatten(),
        nn.Linear(48, 8),
        nn.BatchNorm1d(8),
        nn.Softplus(beta=10),
        nn.Linear(8, 3),
    ).double()
    with torch.no_grad():  # non-trivial running statistics, so eval and train mode differ
        for bn in (net[1], net[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net


def trained_input(wrapper: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch the single training-mode forward pass should see: ``x`` moved by every attack."""
    while isinstance(wrapper, RegularizedModel):
        if isinstance(wrapper, _AdversarialWrapper):
            x = x + wrapper.perturb(x, y)
        wrapper = wrapper.inner
    return x


def batch_stats(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def check_one_step(build) -> None:
    net = bn_net()
    reference = copy.deepcopy(net)
    wrapper = build(net)
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    expected_input = trained_input(wrapper, x, y)
    before = batch_stats(net)
    calls = []
    hook = net[1].register_forward_pre_hook(lambda m, inp: calls.append(m.training))
    wrapper.train()
    flags = [m.training for m in net.modules()]
    wrapper.loss(x, y).backward()
    hook.remove()
    assert calls.count(True) == 1, f"{calls.count(True)} training-mode forward passes through BatchNorm"
    assert [m.training for m in net.modules()] == flags
    reference.train()
    reference(expected_input)
    after, want = batch_stats(net), batch_stats(reference)
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])
    for k, v in want.items():
        assert torch.allclose(after[k], v, rtol=0, atol=1e-12), k
    assert int(after["1.num_batches_tracked"]) == 1


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_each_wrapper_updates_batchnorm_once_like_plain_training(name):
    check_one_step(WRAPPERS[name])


def test_every_nesting_pair_updates_batchnorm_once_like_plain_training():
    for outer, inner in itertools.product(sorted(WRAPPERS), repeat=2):
        try:
            check_one_step(lambda m, o=outer, i=inner: WRAPPERS[o](WRAPPERS[i](m)))
        except AssertionError as err:
            raise AssertionError(f"{outer}({inner}(model)): {err}") from err
