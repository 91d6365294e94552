"""CASO and CAFO on a small CNN trained on real handwritten digits (offline, about 20 s on a laptop CPU).

Run: ``python examples/caso_quickstart.py``. Trains a ReLU CNN on scikit-learn's bundled 8x8 digit scans,
then prints statistics of CAFO, CASO (closed-form Hessian) and CASO with the paper's unsupervised
lambda1 choice for a few test images.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from captum_ext import CAFO, CASO


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y))
    train, test = perm[:1400], perm[1400:]

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in train[torch.randperm(len(train))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print(f"ReLU CNN on real 8x8 digits: test accuracy {acc:.3f}")

    images = x[test[:8]]
    labels = y[test[:8]]
    caso = CASO(model)
    rows = []
    t0 = time.perf_counter()
    cafo_map = CAFO(model).attribute(images, target=labels)
    rows.append(("CAFO (lambda1=0)", cafo_map, time.perf_counter() - t0))
    t0 = time.perf_counter()
    caso_map = caso.attribute(images, target=labels)
    rows.append(("CASO (lambda1=0)", caso_map, time.perf_counter() - t0))
    ranks = caso.last_details.rank.tolist()
    t0 = time.perf_counter()
    sparse_map = caso.attribute(images, target=labels, sparsity=(0.75, 1.0))
    rows.append(("CASO (sparsity 0.75-1)", sparse_map, time.perf_counter() - t0))
    det = caso.last_details

    print(f"\n{'method':<24}{'mean |D|':>12}{'max |D|':>12}{'zeros':>8}{'seconds':>9}")
    for name, m, sec in rows:
        zeros = (m == 0).float().mean().item()
        print(
            f"{name:<24}{m.abs().mean().item():>12.3e}{m.abs().max().item():>12.3e}{zeros:>8.2f}{sec:>9.3f}"
        )
    cos = nn.functional.cosine_similarity(caso_map.flatten(1), cafo_map.flatten(1)).tolist()
    print("\nper image: label, confidence, Hessian rank, cos(CASO, CAFO), chosen lambda1, sparsity")
    probs = torch.softmax(model(images), 1).max(1).values.tolist()
    for i in range(len(labels)):
        print(
            f"  {int(labels[i])}  p={probs[i]:.3f}  rank={ranks[i]}  cos={cos[i]:.4f}  "
            f"lambda1={det.lambda1[i].item():.1e}  eta={det.sparsity[i].item():.2f}"
        )


if __name__ == "__main__":
    main()
