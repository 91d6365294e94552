"""Shared metric plumbing (metrics/_common.py, metrics/_masking.py): targets, validators, results, fill."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ext._format import expand_target
from captum_ext.attr import CASO
from captum_ext.metrics._common import (
    NOT_IN_DICT,
    MetricResult,
    check_eval_mode,
    check_finite,
    check_labels,
    check_not_empty,
    format_target,
    select_output,
)
from captum_ext.metrics._masking import (
    UnitLayout,
    apply_fill,
    counts_for_fractions,
    format_baselines,
    select_baselines,
    unmask,
)

# ------------------------------------------------------------------------------------------ targets


@pytest.mark.parametrize(
    "target, expected",
    [
        (2, [[2], [2], [2]]),
        ([0, 1, 2], [[0], [1], [2]]),
        (torch.tensor([2, 0, 1]), [[2], [0], [1]]),
        (torch.tensor(1), [[1], [1], [1]]),
        (torch.tensor([1]), [[1], [1], [1]]),
        (torch.tensor([[0], [1], [2]]), [[0], [1], [2]]),
    ],
)
def test_format_target_classifier_forms(target, expected):
    assert format_target(target, 3, (3, 4)).tolist() == expected


def test_format_target_multi_dimensional_outputs():
    out_shape = (2, 3, 5)
    assert format_target((1, 4), 2, out_shape).tolist() == [[1, 4], [1, 4]]
    assert format_target([(0, 1), (2, 3)], 2, out_shape).tolist() == [[0, 1], [2, 3]]
    assert format_target(torch.tensor([[0, 1], [2, 3]]), 2, out_shape).tolist() == [[0, 1], [2, 3]]
    out = torch.arange(30.0).reshape(2, 3, 5)
    t = format_target([(0, 1), (2, 3)], 2, out_shape)
    assert select_output(out, t).tolist() == [out[0, 0, 1].item(), out[1, 2, 3].item()]
    with pytest.raises(ValueError, match="out of range"):
        format_target([(0, 1), (3, 0)], 2, out_shape)
    with pytest.raises(ValueError, match="indices"):
        format_target([(0,), (1,)], 2, out_shape)
    with pytest.raises(ValueError, match="tuple"):
        format_target(1, 2, out_shape)


TARGET_FORMS = [
    2,
    [0, 1, 2],
    (1,),
    [(0,), (1,), (2,)],
    torch.tensor([2, 0, 1]),
    torch.tensor(1),
    torch.tensor([[0], [1], [2]]),
    [np.int64(2), np.int64(0), np.int64(1)],
]


@pytest.mark.parametrize("target", TARGET_FORMS)
def test_one_target_parser_for_attributions_and_metrics(target):
    # CASO, the manipulation wrappers and the regularizers parse targets with expand_target, the
    # classifier case of format_target: every Captum form means the same thing on both sides
    expected = format_target(target, 3, (3, 4))[:, 0]
    assert torch.equal(expand_target(target, 3, 4, torch.device("cpu")), expected)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double().eval()
    x = torch.randn(3, 1, 2, 3, dtype=torch.float64)
    ours = CASO(model).attribute(x, target=target)
    assert torch.equal(ours, CASO(model).attribute(x, target=expected))


@pytest.mark.parametrize("target", [[True, False, True], [(1, 2)] * 3, 4, [0.5, 1.0, 2.0]])
def test_attribution_targets_are_refused_like_metric_targets(target):
    with pytest.raises((TypeError, ValueError)) as theirs:
        format_target(target, 3, (3, 4))
    with pytest.raises(theirs.type, match="target"):
        expand_target(target, 3, 4, torch.device("cpu"))


@pytest.mark.parametrize(
    "target, err, match",
    [
        (5, ValueError, r"out of range.*\[0, 4\)"),
        (-1, ValueError, "out of range"),
        ([0, 1], ValueError, "2 entries"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integers"),
        (True, TypeError, "int"),
        ("cat", TypeError, "target"),
        (torch.zeros(3, 2, dtype=torch.long), ValueError, "shape"),
    ],
)
def test_format_target_errors_name_the_argument(target, err, match):
    with pytest.raises(err, match=match):
        format_target(target, 3, (3, 4))


@given(n=st.integers(1, 6), c=st.integers(1, 5), seed=st.integers(0, 100))
def test_check_labels_round_trip(n, c, seed):
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(check_labels(y, n, c), y)
    assert torch.equal(check_labels(y.tolist(), n, c), y)


def test_check_labels_names_the_argument_and_refuses_none():
    with pytest.raises(ValueError, match="y_test index 3"):
        check_labels([0, 3], 2, 3, "y_test")
    with pytest.raises(ValueError, match="y_train is required"):
        check_labels(None, 2, 3, "y_train")


# -------------------------------------------------------------------------------------- validators


def test_validators():
    with pytest.raises(ValueError, match="empty"):
        check_not_empty((torch.zeros(0, 3),))
    with pytest.raises(ValueError, match="feature dimension"):
        check_not_empty((torch.zeros(3),))
    with pytest.raises(ValueError, match="NaN"):
        check_finite((torch.zeros(2), torch.tensor([1.0, float("inf")])), "inputs")
    check_finite(torch.zeros(2, dtype=torch.long), "labels")


def test_check_eval_mode_covers_bound_methods_and_raises_before_touching(untouched):
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.2)).train()
    from captum.attr import Saliency

    for fn in (net, net.forward, Saliency(net).attribute, Saliency(net.forward).attribute):
        with untouched(net), pytest.raises(ValueError, match=r"\.eval\(\)"):
            check_eval_mode(fn)
    check_eval_mode(lambda x: x)  # plain callables cannot be inspected
    check_eval_mode(net.eval())


# ------------------------------------------------------------------------------------------ results


@dataclasses.dataclass(frozen=True)
class _Toy(MetricResult):
    values: Tensor
    names: tuple[str, ...]
    nested: dict
    model: nn.Module = dataclasses.field(metadata=NOT_IN_DICT)

    def plot(self, ax=None, **kwargs):
        return ax


@dataclasses.dataclass(frozen=True)
class _NoPlot(MetricResult):
    values: Tensor


def test_metric_result_to_dict_is_json_and_frozen():
    res = _Toy(torch.tensor([[1.0, 2.0]]), ("a",), {"k": torch.tensor(3)}, nn.Linear(1, 1))
    d = res.to_dict()
    assert d == {"values": [[1.0, 2.0]], "names": ["a"], "nested": {"k": 3}}
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.values = torch.zeros(1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="abstract method '?plot"):  # every result must draw itself
        _NoPlot(torch.zeros(1))


# ------------------------------------------------------------------------------------ fill / units


def test_counts_for_fractions_keep_at_least_one_unit():
    assert counts_for_fractions((0.05, 1.0), 10) == (1, 10)  # 0.5 rounds half up to 1
    with pytest.raises(ValueError, match="at least 0.05"):
        counts_for_fractions((0.04,), 10)


def test_format_baselines_forms_and_per_example_selection():
    x = torch.arange(24.0).reshape(4, 2, 3)
    assert format_baselines(None, (x,))[0].shape == (1, 1, 1)  # Captum's default 0
    assert format_baselines(torch.ones(3), (x,))[0].shape == (1, 1, 3)  # broadcast per example
    assert format_baselines(torch.ones(1, 2, 3), (x,))[0].shape == (1, 2, 3)
    per = format_baselines(torch.arange(4.0).reshape(4, 1, 1), (x,))[0]
    assert per.shape == (4, 1, 1)
    (sel,) = select_baselines((per,), 4, torch.tensor([2, 3]))
    assert sel.flatten().tolist() == [2.0, 3.0]
    # tuple inputs: one entry each
    a, b = format_baselines((0.0, "mean"), (x, x[:, 0]))
    assert a.shape == (1, 1, 1) and b == "mean"
    for bad, match in (
        (torch.zeros(2, 2, 3), "fits neither"),
        (torch.zeros(5), "fits neither"),
        ("median", "baselines"),
        (torch.tensor(float("nan")), "NaN"),
        ((0.0,), "entries"),
    ):
        with pytest.raises(ValueError, match=match):
            format_baselines(bad, (x,) if not isinstance(bad, tuple) else (x, x))
    with pytest.raises(ValueError, match="channel dimension"):
        format_baselines("channel_mean", (torch.zeros(2, 3),))


def test_channel_mean_follows_channel_dim():
    """channels-last images: ``channel_dim=-1`` averages each channel over the pixels."""
    x = torch.tensor([[[[1.0, 10.0], [3.0, 30.0]]]])  # (1, 1, 2, 2): H=1, W=2, C=2 (channels last)
    keep = torch.zeros(1, 2, dtype=torch.bool)  # nothing kept: all filled
    out = unmask(x, keep, (1, 2, 1), "channel_mean", channel_dim=-1)
    assert out[0, 0, :, 0].tolist() == [2.0, 2.0] and out[0, 0, :, 1].tolist() == [20.0, 20.0]
    with pytest.raises(ValueError, match="channel_dim"):
        apply_fill(x, torch.ones_like(x, dtype=torch.bool), "channel_mean", channel_dim=4)


def test_unit_layout_ranks_tuple_inputs_together():
    a, b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 5)
    layout = UnitLayout.of((a, b), "abs_sum")
    assert layout.sizes == (4, 5) and layout.total == 9
    keep = torch.zeros(2, 9, dtype=torch.bool)
    keep[:, 0] = True
    keep[:, 4] = True
    ma, mb = layout.to_inputs(keep, (a, b))
    assert ma.shape == a.shape and bool(ma[:, :, 0, 0].all()) and int(ma.sum()) == 6
    assert mb[:, 0].all() and int(mb.sum()) == 2
    with pytest.raises(ValueError, match="channel_dim"):
        UnitLayout.of((a,), "abs_sum", channel_dim=0)
