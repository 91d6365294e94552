"""Which Captum methods show a painted picture M, and which M ⊙ x: one test per method.

The table of captum_ext/manipulation/__init__.py is generated from these measurements; rewrite it with

    PYTHONPATH=$PWD python tests/test_manipulation_captum.py --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from captum.attr import (
    Deconvolution,
    DeepLift,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from captum_ext.manipulation import SoftmaxShift

DOC = Path(__file__).resolve().parents[1] / "captum_ext" / "manipulation" / "__init__.py"
BEGIN, END = ".. begin generated table (tests/test_manipulation_captum.py)", ".. end generated table"
TARGET = 2

# method label -> (attribute call on the painted model, what it returns)
METHODS = {
    "``Saliency`` (``abs=False``)": (lambda m, x: Saliency(m).attribute(x, target=TARGET, abs=False), "M"),
    "``GuidedBackprop``": (lambda m, x: GuidedBackprop(m).attribute(x, target=TARGET), "M"),
    "``Deconvolution``": (lambda m, x: Deconvolution(m).attribute(x, target=TARGET), "M"),
    "``NoiseTunnel(Saliency)`` (SmoothGrad, ``abs=False``)": (
        lambda m, x: NoiseTunnel(Saliency(m)).attribute(
            x, target=TARGET, abs=False, nt_type="smoothgrad", nt_samples=4, stdevs=0.5
        ),
        "M",
    ),
    "``InputXGradient``": (lambda m, x: InputXGradient(m).attribute(x, target=TARGET), "M ⊙ x"),
    "``DeepLift`` (zero baseline)": (lambda m, x: DeepLift(m).attribute(x, target=TARGET), "M ⊙ x"),
    "``IntegratedGradients`` (zero baseline)": (
        lambda m, x: IntegratedGradients(m).attribute(x, target=TARGET, n_steps=16),
        "M ⊙ x",
    ),
    "``GradientShap`` (zero baselines)": (
        lambda m, x: GradientShap(m).attribute(x, torch.zeros_like(x[:2]), target=TARGET, stdevs=0.0),
        "M ⊙ x",
    ),
    "``FeatureAblation`` (zero baseline)": (
        lambda m, x: FeatureAblation(m).attribute(x, target=TARGET),
        "M ⊙ x",
    ),
}


def painted_setting() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A ReLU CNN (float64, eval), a picture M and inputs x."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )
    net = net.double().eval()
    gen = torch.Generator().manual_seed(1)
    picture = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    return SoftmaxShift.paint(net, TARGET, picture), picture, x


def measured_kind(label: str) -> str:
    """``"M"``, ``"M ⊙ x"`` or ``"neither"``: what the method returns on the painted model (float64)."""
    painted, picture, x = painted_setting()
    attr = METHODS[label][0](painted, x.clone()).detach()
    for kind, expected in (("M", picture.expand_as(x)), ("M ⊙ x", picture * x)):
        if torch.allclose(attr, expected, rtol=1e-9, atol=1e-9):  # float64, exact up to rounding
            return kind
    return "neither"


def table(kinds: dict[str, str]) -> str:
    width = max(len(k) for k in kinds)
    rule = f"{'=' * width}  {'=' * 9}"
    rows = [rule, f"{'Captum method (target = painted class)':{width}}  returns", rule]
    rows += [f"{label:{width}}  ``{kind}``" for label, kind in kinds.items()]
    return "\n".join([*rows, rule])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("label", list(METHODS))
def test_captum_method_returns_the_documented_picture_form(label):
    assert measured_kind(label) == METHODS[label][1]


def documented_table() -> str:
    text = DOC.read_text()
    match = re.search(re.escape(BEGIN) + r"\n\n(.*?)\n\n" + re.escape(END), text, re.S)
    assert match, f"the generated table markers are missing in {DOC}"
    return match.group(1)


def test_documented_table_is_the_measured_one():
    # The table lists the form each test above asserts (and measured, when they pass).
    assert documented_table() == table({label: kind for label, (_, kind) in METHODS.items()})


def write_table() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kinds = {label: measured_kind(label) for label in METHODS}
    block = table(kinds)
    text = DOC.read_text()
    new = re.sub(
        re.escape(BEGIN) + r"\n\n.*?\n\n" + re.escape(END),
        lambda _: f"{BEGIN}\n\n{block}\n\n{END}",
        text,
        flags=re.S,
    )
    DOC.write_text(new)
    print(table(kinds))


if __name__ == "__main__" and "--write" in sys.argv:
    write_table()
