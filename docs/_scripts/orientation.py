"""Draw ``docs/orientation.png``: Saliency, CASO (Captum's orientation, the default) and CASO (the paper's
orientation) on one digit, with Captum's ``visualize_image_attr`` colouring.

A small ReLU CNN (``benchmarks._repro.small_cnn``) is trained for 3 epochs on scikit-learn's digits
(offline, seeded; a few seconds on one CPU core). Run from the repository root::

    PYTHONPATH=. python docs/_scripts/orientation.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from captum.attr import Saliency
from captum.attr import visualization as viz
from matplotlib.figure import Figure

from benchmarks._repro import small_cnn
from captum_ext import CASO
from captum_ext.datasets import SklearnDigits
from captum_ext.training import fit

OUT = Path(__file__).resolve().parents[1] / "orientation.png"
INDEX = 3  # the test image shown


def main() -> Path:
    torch.manual_seed(0)
    data = SklearnDigits()
    x_train, y_train = data.load("train")
    x_test, y_test = data.load("test")
    model = small_cnn()
    fit(model, (x_train[:, None], y_train), epochs=3, lr=3e-3, seed=0, progress=False)
    x = x_test[INDEX : INDEX + 1, None]
    with torch.no_grad():
        target = int(model(x).argmax(1))
    maps = {
        "Saliency (signed)": Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False),
        'CASO, orientation="captum"\n(default)': CASO(model).attribute(x, target=target),
        'CASO, orientation="paper"': CASO(model).attribute(x, target=target, orientation="paper"),
    }
    image = x[0].permute(1, 2, 0).numpy()
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    axes = fig.subplots(2, 3)
    for col, (name, attr) in enumerate(maps.items()):
        a = (attr[0] / attr.abs().max()).permute(1, 2, 0).detach().numpy()  # scale-free picture
        for row, sign in enumerate(("all", "positive")):
            viz.visualize_image_attr(
                a,
                image,
                method="heat_map",
                sign=sign,
                plt_fig_axis=(fig, axes[row, col]),
                use_pyplot=False,
                title=f'{name}\nsign="{sign}"' if row == 0 else f'sign="{sign}"',
            )
    fig.suptitle(
        f"Digit {int(y_test[INDEX])}, explained class {target}. Top: signed maps (green > 0, red < 0);\n"
        'bottom: what visualize_image_attr(..., sign="positive") shows. Captum\'s orientation (the\n'
        "default) agrees with Saliency; the paper's Δ is its negation: evidence against the class.",
        fontsize=9,
    )
    fig.savefig(OUT, dpi=72)
    return OUT


if __name__ == "__main__":
    print(main())
